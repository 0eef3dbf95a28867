//! What an AssemblyAI socket's TLS config costs in heap (ADR 0060), counted by a global
//! allocator of this test binary's own: a config per connection, as tokio-tungstenite builds
//! when given none, against the service's one shared config.

use std::alloc::System;

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static ALLOCATOR: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const CONNECTIONS: isize = 100;

/// Heap held per connection while `CONNECTIONS` of them, each made by `connect`, are alive.
fn held_per_connection(connect: impl Fn() -> rustls::ClientConnection) -> isize {
    let region = Region::new(ALLOCATOR);
    let held: Vec<_> = (0..CONNECTIONS).map(|_| connect()).collect();
    let change = region.change();
    drop(held);
    let net = change.bytes_allocated as isize - change.bytes_deallocated as isize
        + change.bytes_reallocated;
    net / CONNECTIONS
}

#[test]
fn a_shared_config_saves_its_root_store_and_session_cache_on_every_socket() {
    let name: rustls::pki_types::ServerName<'static> =
        "streaming.assemblyai.com".try_into().unwrap();
    let shared = callbridge::tls::websocket_client_config();
    let with_shared = held_per_connection(|| {
        rustls::ClientConnection::new(shared.clone(), name.clone()).unwrap()
    });
    // tokio-tungstenite 0.29's `wrap_stream` without a connector.
    let with_own = held_per_connection(|| {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        rustls::ClientConnection::new(std::sync::Arc::new(config), name.clone()).unwrap()
    });
    eprintln!("heap per connection: own config {with_own} B, shared config {with_shared} B");
    // At rustls 0.23.46: 28,097 against 3,777 bytes.
    assert!(
        with_own - with_shared > 16 * 1024,
        "own {with_own} B, shared {with_shared} B"
    );
    assert!(with_shared < 8 * 1024, "shared {with_shared} B");
}
