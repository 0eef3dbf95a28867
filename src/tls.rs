//! TLS for outbound connections: rustls over ring, one process-wide crypto provider, and one
//! client config shared by every outbound WebSocket.
//!
//! Several dependencies link rustls; installing the provider once at start-up removes any
//! ambiguity about which one they use.

use std::sync::{Arc, Once, OnceLock};

/// Idempotent; call before building any client.
pub fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Err means another provider was installed first, which is equally fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

fn webpki_roots() -> rustls::RootCertStore {
    rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    }
}

fn client_config(roots: rustls::RootCertStore) -> rustls::ClientConfig {
    install_crypto_provider();
    rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// The TLS client of every outbound WebSocket (AssemblyAI's sessions), built once. Given no
/// config, tokio-tungstenite builds one per connection, and each socket then holds its own
/// copy of the root store and an empty resumption cache (256 tickets, allocated up front) for
/// as long as it lives: 24 KiB of heap a socket, two sockets a call. One shared config also lets a
/// reconnect after a dropped session resume its TLS session (ADR 0060).
pub fn websocket_client_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            #[allow(unused_mut)]
            let mut roots = webpki_roots();
            // A simulator build also reaches the simulators over `wss://`.
            #[cfg(feature = "sim")]
            roots
                .add(simulator_root())
                .expect("the test root is a CA certificate");
            Arc::new(client_config(roots))
        })
        .clone()
}

/// The root that signed the simulators' `localhost` certificate (`sim::tls`), valid from
/// 2025 to 2125. Its private key was never written down, and its name constraints permit
/// only `localhost` and 127.0.0.1: it vouches for that one certificate and nothing else.
/// Kept here, not in `sim`, because what the service trusts is this module's to say.
#[cfg(feature = "sim")]
fn simulator_root() -> rustls::pki_types::CertificateDer<'static> {
    use rustls::pki_types::pem::PemObject as _;
    rustls::pki_types::CertificateDer::from_pem_slice(include_bytes!("tls/simulator-root.pem"))
        .expect("the test root is PEM")
}

/// Honours `sslmode` from the URL: `require` (Neon) negotiates TLS, `disable` does not.
pub fn postgres_connector() -> tokio_postgres_rustls::MakeRustlsConnect {
    tokio_postgres_rustls::MakeRustlsConnect::new(client_config(webpki_roots()))
}
