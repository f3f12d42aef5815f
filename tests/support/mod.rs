//! Real parts on real sockets: test backends, switchyard in-process, a client.
#![allow(dead_code)]

pub mod backend;
pub mod bin;
pub mod client;
pub mod dns;
pub mod etcd;
pub mod grpc;
pub mod h2peer;
pub mod h2refuser;
pub mod otlp;
pub mod proxy;
pub mod raw;
pub mod tls;

pub use backend::TestBackend;
pub use client::{client, get, get_with, send};
pub use proxy::{HEAD, Proxy, addrs};
