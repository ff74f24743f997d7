//! One module per subcommand.

mod run;

pub use run::run;
