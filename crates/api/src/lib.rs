//! hotmem's operator API: HTTP/1.1 + JSON over a Unix socket, versioned under `/v1`.
//!
//! The crate knows nothing of KVM or devices: [`routes`] turns a request into a [`Command`],
//! the VMM's [`Handler`] carries it out, and [`server`] / [`client`] move bytes.

pub mod client;
mod error;
mod http;
pub mod model;
pub mod routes;
pub mod server;
pub mod size;

pub use error::{ApiError, ClientError};
pub use routes::Command;
pub use server::{ApiServer, Handler};
