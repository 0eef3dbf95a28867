//! TLS for the simulators: a `localhost` certificate signed by a test root, so tests and the
//! media bench reach a simulator over `wss://` as the service reaches AssemblyAI (ADR 0060).
//! The certificate is for `localhost` and 127.0.0.1; `tls::simulator_root` is the root a `sim`
//! build of the service trusts for it.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

const CHAIN: &[u8] = include_bytes!("tls/localhost-chain.pem");
const KEY: &[u8] = include_bytes!("tls/localhost-key.pem");

/// The simulators' side: the `localhost` certificate and rustls's defaults, which send TLS
/// 1.3 session tickets, so a client that keeps its config can resume.
pub fn server_config() -> Arc<rustls::ServerConfig> {
    crate::tls::install_crypto_provider();
    let chain = CertificateDer::pem_slice_iter(CHAIN)
        .collect::<Result<Vec<_>, _>>()
        .expect("the test chain is PEM");
    let key = PrivateKeyDer::from_pem_slice(KEY).expect("the test key is PEM");
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("the test key matches its certificate");
    Arc::new(config)
}

/// A listener for `axum::serve` that hands over connections once their TLS handshake is
/// done. Each handshake runs in a task of its own: a benchmark opens thousands of sessions
/// at once, and one slow or failed handshake must not hold up the others.
pub struct TlsListener {
    connections: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    address: SocketAddr,
}

/// A client that opens a connection and never finishes its handshake is let go after this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl TlsListener {
    pub fn new(listener: TcpListener) -> io::Result<Self> {
        let address = listener.local_addr()?;
        let acceptor = TlsAcceptor::from(server_config());
        let (handed_over, connections) = mpsc::channel(1024);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    // The server went away: stop accepting, and free the port.
                    () = handed_over.closed() => return,
                    accepted = listener.accept() => accepted,
                };
                let (tcp, peer) = match accepted {
                    Ok(accepted) => accepted,
                    // Out of descriptors, or a connection reset while queued: wait a little
                    // rather than spin.
                    Err(error) => {
                        tracing::debug!(%error, "simulator accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let (acceptor, handed_over) = (acceptor.clone(), handed_over.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = handed_over.send((tls, peer)).await;
                        }
                        // A client that does not trust the simulator's root ends here: say
                        // so, or it would look like audio lost for no reason.
                        Ok(Err(error)) => {
                            tracing::warn!(%error, %peer, "simulator TLS handshake failed");
                        }
                        Err(_) => tracing::warn!(%peer, "simulator TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self {
            connections,
            address,
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.connections.recv().await {
            Some(connection) => connection,
            // The accepting task ended: no connection will come again.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.address)
    }
}
