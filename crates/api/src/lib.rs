//! hotmem's operator API: HTTP/1.1 + JSON over a Unix socket, versioned under `/v1`.
//!
//! The crate knows nothing of KVM or devices: [`routes`] turns a request into a [`Command`],
//! the VMM's [`Handler`] carries it out and answers a [`Reply`] (JSON, text or a stream of
//! lines), and [`server`] / [`client`] move bytes. [`model`] holds the JSON bodies and events,
//! [`metrics`] the Prometheus text writer, [`size`] human sizes. `openapi.yaml` beside this
//! crate documents every route (checked against [`routes::ROUTES`] by a test).

pub mod client;
mod error;
mod http;
pub mod metrics;
pub mod model;
pub mod routes;
pub mod server;
pub mod size;

pub use error::{ApiError, ClientError};
pub use http::{JSON, NDJSON, PROMETHEUS_TEXT};
/// The server's HTTP request reader, public so the fuzz targets can reach it.
pub use http::{Request as HttpRequest, read_request};
pub use routes::Command;
pub use server::{ApiServer, Handler, LineStream, Reply, StreamItem};
