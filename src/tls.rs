//! TLS for outbound connections: rustls over ring, one process-wide crypto provider.
//!
//! Several dependencies link rustls; installing the provider once at start-up removes any
//! ambiguity about which one they use.

use std::sync::Once;

/// Idempotent; call before building any client.
pub fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Err means another provider was installed first, which is equally fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

fn client_config() -> rustls::ClientConfig {
    install_crypto_provider();
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// Honours `sslmode` from the URL: `require` (Neon) negotiates TLS, `disable` does not.
pub fn postgres_connector() -> tokio_postgres_rustls::MakeRustlsConnect {
    tokio_postgres_rustls::MakeRustlsConnect::new(client_config())
}
