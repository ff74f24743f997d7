//! One module per subcommand.

mod boot;
mod live;
mod record;
mod replay;
mod run;
mod status;

pub use record::record;
pub use replay::replay;
pub use run::run;
pub use status::status;
