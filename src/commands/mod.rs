//! One module per subcommand.

mod app;
mod backup;
mod boot;
mod drive;
mod ft;
mod join;
mod keygen;
mod live;
mod pair;
mod primary;
mod record;
mod rejoin;
mod replay;
mod run;
mod status;

pub use backup::backup;
pub use ft::ft;
pub use keygen::keygen;
pub use primary::primary;
pub use record::record;
pub use replay::replay;
pub use run::run;
pub use status::status;
