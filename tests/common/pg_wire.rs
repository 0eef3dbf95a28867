//! A TCP proxy in front of PostgreSQL that reads the frontend side of the wire protocol and
//! records every round trip the service makes: the statements executed between two `Sync`s
//! (extended protocol) or in one simple `Query`. What a request costs PostgreSQL is then
//! counted, not timed: load on a shared machine cannot change it.
//!
//! Prepared statements are named in `Parse` and executed by name in `Bind`, so the proxy keeps
//! each connection's names to know which SQL a round trip ran.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One round trip: the SQL of each statement it executed (empty for a `Parse`/`Describe`
/// only trip, i.e. preparing).
pub type RoundTrip = Vec<String>;

pub struct PgWire {
    pub address: SocketAddr,
    trips: Arc<Mutex<Vec<RoundTrip>>>,
}

impl PgWire {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let trips: Arc<Mutex<Vec<RoundTrip>>> = Arc::default();
        let log = trips.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let log = log.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut client_read, mut client_write) = inbound.into_split();
                    let (mut server_read, mut server_write) = outbound.into_split();
                    let upstream = async {
                        let mut reader = Frontend::default();
                        let mut buffer = vec![0u8; 64 * 1024];
                        loop {
                            let n = match client_read.read(&mut buffer).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            for trip in reader.feed(&buffer[..n]) {
                                log.lock().unwrap().push(trip);
                            }
                            if server_write.write_all(&buffer[..n]).await.is_err() {
                                return;
                            }
                        }
                    };
                    let downstream = tokio::io::copy(&mut server_read, &mut client_write);
                    tokio::select! {
                        () = upstream => {}
                        _ = downstream => {}
                    }
                });
            }
        });
        Self { address, trips }
    }

    /// Forgets the round trips so far.
    pub fn reset(&self) {
        self.trips.lock().unwrap().clear();
    }

    /// The round trips since the last reset.
    pub fn trips(&self) -> Vec<RoundTrip> {
        self.trips.lock().unwrap().clone()
    }
}

/// The frontend messages of one connection, parsed as they stream past.
#[derive(Default)]
struct Frontend {
    pending: Vec<u8>,
    started: bool,
    statements: HashMap<String, String>,
    current: RoundTrip,
    bound: Option<String>,
}

/// `SSLRequest` and `GSSENCRequest`: untyped like the startup message that follows them.
const ENCRYPTION_REQUESTS: [u32; 2] = [80_877_103, 80_877_104];

impl Frontend {
    fn feed(&mut self, bytes: &[u8]) -> Vec<RoundTrip> {
        self.pending.extend_from_slice(bytes);
        let mut done = Vec::new();
        loop {
            if !self.started {
                // The startup message: length, then the protocol version (no type byte).
                if self.pending.len() < 8 {
                    break;
                }
                let length = u32::from_be_bytes(self.pending[..4].try_into().unwrap()) as usize;
                if self.pending.len() < length {
                    break;
                }
                let code = u32::from_be_bytes(self.pending[4..8].try_into().unwrap());
                self.started = !ENCRYPTION_REQUESTS.contains(&code);
                self.pending.drain(..length);
                continue;
            }
            if self.pending.len() < 5 {
                break;
            }
            let kind = self.pending[0];
            let length = u32::from_be_bytes(self.pending[1..5].try_into().unwrap()) as usize;
            if self.pending.len() < 1 + length {
                break;
            }
            let body: Vec<u8> = self.pending[5..1 + length].to_vec();
            self.pending.drain(..1 + length);
            match kind {
                b'P' => {
                    let name = cstring(&body, 0);
                    let sql = cstring(&body, name.len() + 1);
                    self.statements.insert(name, sql);
                }
                b'B' => {
                    let portal = cstring(&body, 0);
                    self.bound = Some(cstring(&body, portal.len() + 1));
                }
                b'E' => {
                    let statement = self.bound.take().unwrap_or_default();
                    let sql = self.statements.get(&statement).cloned().unwrap_or_default();
                    self.current.push(sql);
                }
                b'S' => done.push(std::mem::take(&mut self.current)),
                b'Q' => done.push(vec![cstring(&body, 0)]),
                _ => {}
            }
        }
        done
    }
}

fn cstring(body: &[u8], from: usize) -> String {
    let rest = &body[from.min(body.len())..];
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end]).into_owned()
}
