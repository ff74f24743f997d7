//! One module per subcommand.

mod boot;
mod live;
mod record;
mod replay;
mod run;

pub use record::record;
pub use replay::replay;
pub use run::run;
