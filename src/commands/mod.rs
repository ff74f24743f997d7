//! One module per subcommand.

mod boot;
mod live;
mod run;

pub use run::run;
