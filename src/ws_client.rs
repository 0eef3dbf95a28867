//! The WebSocket client our upstream sessions (AssemblyAI streaming) use: the connection, its
//! handshake, and the frames either way, with buffers that keep the size they were given
//! however large a message was (ADR 0061).
//!
//! tungstenite reads into one buffer that grows to fit the largest message it has seen and
//! never shrinks, and reserves a message's whole length on top of what it already holds. A
//! Turn of 20 words (about 2.5 KB) doubled each AssemblyAI socket's buffer to 8 KiB, and the
//! Turn of a long monologue (about 100 bytes a word: tens of KB) left one of twice its size
//! for the rest of the call: two sockets a call, thousands of calls a replica. Here a message
//! that fits the fixed read buffer is handed out from it; a larger one is read into a buffer
//! of its exact size (one in fragments, into one grown to fit), which the next read frees.
//!
//! What this does not do: extensions (none is offered, so a frame with a reserved bit fails
//! the connection), subprotocols, redirects, proxies. tungstenite still does the parts that
//! hold no buffer: the request, the response, the frame headers.

use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use bytes::BufMut as _;
use futures_util::FutureExt as _;
use tokio::io::{
    AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadHalf, WriteHalf,
};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::handshake::client::{Request, Response, generate_request};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::handshake::machine::TryParse as _;
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};

/// What [`connect`] opens: TCP, with TLS for `wss://`.
pub type Stream = MaybeTlsStream<TcpStream>;

/// The most a server's handshake response may take (its status line and headers).
const MAX_RESPONSE_HEAD: usize = 8 * 1024;

/// A control frame's payload is at most 125 bytes (RFC 6455 §5.5), so the read buffer must
/// hold one whole with the longest header a server sends (10 bytes).
const MIN_READ_BUFFER: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("invalid WebSocket URL: {0}")]
    Url(String),
    #[error("HTTP error: {0}")]
    Http(tokio_tungstenite::tungstenite::http::StatusCode),
    #[error("WebSocket handshake refused: {0}")]
    Handshake(&'static str),
    #[error("WebSocket protocol error: {0}")]
    Protocol(&'static str),
    #[error("text is not UTF-8")]
    NotUtf8,
    #[error("message of {0} bytes is above the limit")]
    TooLong(u64),
    #[error("connection lost")]
    Eof,
    #[error("handshake timed out")]
    HandshakeTimeout,
    #[error("the WebSocket is closed")]
    Closed,
}

/// How a connection is set up.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// The read buffer's size, all a connection keeps for reading between messages: it holds
    /// any message up to this size; a larger one takes a buffer of its own while it is read.
    /// At least 256 bytes (a control frame must fit whole); less is raised to that.
    pub read_buffer: usize,
    /// The write buffer kept between writes; a larger write takes more only while it lasts.
    pub write_buffer: usize,
    /// The longest message accepted, fragments included.
    pub max_message: usize,
    /// For the TCP connect, TLS and the upgrade together.
    pub handshake_timeout: Duration,
}

/// An open connection, in its two halves: one task reads while another writes.
pub struct Socket<S = Stream> {
    pub reader: Reader<S>,
    pub writer: Writer<S>,
    /// Whether TLS was resumed (`None` for plain `ws://`).
    pub tls_handshake: Option<rustls::HandshakeKind>,
}

/// Opens a WebSocket to `request`'s URL (`ws://` or `wss://`, the latter with `tls`). The
/// request carries any header the server needs besides the upgrade's own.
pub async fn connect(
    request: Request,
    tls: &Arc<rustls::ClientConfig>,
    options: Options,
) -> Result<Socket, Error> {
    tokio::time::timeout(options.handshake_timeout, handshake(request, tls, options))
        .await
        .map_err(|_| Error::HandshakeTimeout)?
}

async fn handshake(
    request: Request,
    tls: &Arc<rustls::ClientConfig>,
    options: Options,
) -> Result<Socket, Error> {
    let uri = request.uri().clone();
    let secure = match uri.scheme_str() {
        Some("wss") => true,
        Some("ws") => false,
        _ => return Err(Error::Url(format!("{uri}: not ws:// or wss://"))),
    };
    let host = uri
        .host()
        .ok_or_else(|| Error::Url(format!("{uri}: no host")))?;
    // rustls and the resolver take an IPv6 address without its brackets.
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
    let tcp = TcpStream::connect((host.as_str(), port)).await?;
    // Latency matters more than packet count: a batch and its ping go out as one write.
    tcp.set_nodelay(true)?;
    let (mut stream, tls_handshake) = if secure {
        let name = rustls::pki_types::ServerName::try_from(host)
            .map_err(|_| Error::Url(format!("{uri}: not a TLS server name")))?;
        let stream = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await?;
        let kind = stream.get_ref().1.handshake_kind();
        (MaybeTlsStream::Rustls(stream), kind)
    } else {
        (MaybeTlsStream::Plain(tcp), None)
    };

    let (head, key) = generate_request(request).map_err(|e| Error::Url(e.to_string()))?;
    stream.write_all(&head).await?;
    stream.flush().await?;
    // Read the response up to the end of its head; what follows is frames already.
    let mut response = Vec::with_capacity(1024);
    let (length, response_head) = loop {
        if response.len() >= MAX_RESPONSE_HEAD {
            return Err(Error::Handshake("response head too long"));
        }
        let before = response.len();
        response.reserve(1024.min(MAX_RESPONSE_HEAD - before));
        if stream.read_buf(&mut response).await? == 0 {
            return Err(Error::Eof);
        }
        match Response::try_parse(&response) {
            Ok(Some(parsed)) => break parsed,
            Ok(None) => continue,
            Err(_) => return Err(Error::Handshake("unreadable response")),
        }
    };
    verify(&response_head, &key)?;

    let (reader, writer) = over(stream, &response[length..], options);
    Ok(Socket {
        reader,
        writer,
        tls_handshake,
    })
}

/// The two halves of a connection over `stream`, whose upgrade is done: `early` is what was
/// read after the response's head (frames already). [`connect`] ends with this; a transport
/// of one's own (an in-memory one in the fuzz target) starts here.
pub fn over<S: AsyncRead + AsyncWrite>(
    stream: S,
    early: &[u8],
    options: Options,
) -> (Reader<S>, Writer<S>) {
    let (read, write) = tokio::io::split(stream);
    let out = Arc::new(Mutex::new(Out {
        io: write,
        buf: Vec::with_capacity(options.write_buffer),
        written: 0,
        keep: options.write_buffer,
        closed: false,
    }));
    let mut buf = vec![0u8; options.read_buffer.max(MIN_READ_BUFFER)].into_boxed_slice();
    // Frames that came with the response: the buffer takes what it can, the rest waits.
    let held = early.len().min(buf.len());
    buf[..held].copy_from_slice(&early[..held]);
    let reader = Reader {
        io: read,
        buf,
        start: 0,
        end: held,
        early: early[held..].to_vec(),
        spill: Vec::new(),
        message: None,
        spilling: None,
        handed_out: false,
        done: false,
        max_message: options.max_message,
        out: out.clone(),
    };
    (reader, Writer { out })
}

/// RFC 6455 §4.1: a 101 with the upgrade's headers and our key's accept value, no extension
/// and no subprotocol (we offer neither).
fn verify(response: &Response, key: &str) -> Result<(), Error> {
    if response.status().as_u16() != 101 {
        return Err(Error::Http(response.status()));
    }
    let headers = response.headers();
    let is = |name: &str, value: &str| {
        headers
            .get(name)
            .and_then(|h| h.to_str().ok())
            .is_some_and(|h| {
                h.split(',')
                    .any(|token| token.trim().eq_ignore_ascii_case(value))
            })
    };
    if !is("upgrade", "websocket") {
        return Err(Error::Handshake("no Upgrade: websocket"));
    }
    if !is("connection", "upgrade") {
        return Err(Error::Handshake("no Connection: upgrade"));
    }
    if headers
        .get("sec-websocket-accept")
        .is_none_or(|accept| accept.as_bytes() != derive_accept_key(key.as_bytes()).as_bytes())
    {
        return Err(Error::Handshake("wrong Sec-WebSocket-Accept"));
    }
    if headers.contains_key("sec-websocket-extensions") {
        return Err(Error::Handshake("an extension we did not offer"));
    }
    if headers.contains_key("sec-websocket-protocol") {
        return Err(Error::Handshake("a subprotocol we did not offer"));
    }
    Ok(())
}

/// A message, or the control frame the caller sees (pings are answered here).
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    Text(&'a str),
    Binary(&'a [u8]),
    Pong(&'a [u8]),
    /// The server's close frame, its code and reason if it gave them; the close is answered.
    Close(Option<(u16, &'a str)>),
}

/// Where the message being handed out is.
enum Ready {
    /// In the read buffer, at this range.
    Buffered(OpCode, std::ops::Range<usize>),
    /// In `spill`.
    Spilled(Data),
}

/// The reading half.
///
/// Cancel-safe: what has been read is kept in the reader, never in `next`'s future, so
/// `next` may lose a race in a `select!` and be called again.
pub struct Reader<S = Stream> {
    io: ReadHalf<S>,
    /// Fixed size: what `Options::read_buffer` says, whatever comes.
    buf: Box<[u8]>,
    /// The unread bytes are `buf[start..end]`. A frame that fits stays there, header and
    /// all, until the whole of it has come.
    start: usize,
    end: usize,
    /// Frames that came with the handshake response and did not fit `buf` (almost never).
    early: Vec<u8>,
    /// The message too large for `buf` (exactly its size), or in fragments (grown to fit, at
    /// most `max_message`); freed by the next read.
    spill: Vec<u8>,
    /// The kind of the message being read into `spill`.
    message: Option<Data>,
    /// The current frame's payload bytes still to be read into `spill`, and whether the
    /// frame ends its message.
    spilling: Option<(u64, bool)>,
    /// `spill` holds the message handed out last.
    handed_out: bool,
    /// A close or an error was handed out: the connection reads nothing more.
    done: bool,
    max_message: usize,
    out: Arc<Mutex<Out<S>>>,
}

impl<S: AsyncRead + AsyncWrite> Reader<S> {
    /// The next message or control frame the caller sees. After an error or a close the
    /// connection is done.
    pub async fn next(&mut self) -> Result<Incoming<'_>, Error> {
        if self.done {
            return Err(Error::Closed);
        }
        let ready = match self.read_message().await {
            Ok(ready) => ready,
            Err(error) => {
                let code = match &error {
                    Error::Protocol(_) => 1002,
                    Error::NotUtf8 => 1007,
                    Error::TooLong(_) => 1009,
                    _ => 0,
                };
                // Done before anything is awaited: a `next()` cancelled below must not read on
                // past a message it has already consumed.
                self.done = true;
                self.spill = Vec::new();
                if code != 0 {
                    // RFC 6455 §7.1.7: a close frame saying why, before the connection drops.
                    let mut out = self.out.lock().await;
                    out.queue_close(code, "");
                    out.flush_now();
                }
                return Err(error);
            }
        };
        self.done = matches!(ready, Ready::Buffered(OpCode::Control(Control::Close), _));
        Ok(match ready {
            Ready::Buffered(OpCode::Control(Control::Pong), range) => {
                Incoming::Pong(&self.buf[range])
            }
            Ready::Buffered(OpCode::Control(_), range) => {
                // Checked in `read_message`.
                Incoming::Close(close_payload(&self.buf[range]).unwrap_or_default())
            }
            Ready::Buffered(OpCode::Data(Data::Text), range) => {
                // Checked in `read_message`.
                Incoming::Text(std::str::from_utf8(&self.buf[range]).unwrap_or_default())
            }
            Ready::Buffered(OpCode::Data(_), range) => Incoming::Binary(&self.buf[range]),
            Ready::Spilled(Data::Text) => {
                Incoming::Text(std::str::from_utf8(&self.spill).unwrap_or_default())
            }
            Ready::Spilled(_) => Incoming::Binary(&self.spill),
        })
    }

    /// Reads frames up to the next message or control frame the caller sees, answering pings
    /// (and a close) on the way.
    async fn read_message(&mut self) -> Result<Ready, Error> {
        if self.handed_out {
            self.spill = Vec::new();
            self.handed_out = false;
        }
        loop {
            if let Some((_, ends_message)) = self.spilling {
                self.read_spilled().await?;
                self.spilling = None;
                if !ends_message {
                    continue;
                }
                let kind = self.message.take().unwrap_or(Data::Binary);
                if kind == Data::Text && std::str::from_utf8(&self.spill).is_err() {
                    return Err(Error::NotUtf8);
                }
                self.handed_out = true;
                return Ok(Ready::Spilled(kind));
            }
            let (header, length, header_length) = self.peek_header().await?;
            // RFC 6455 §5.2: the most significant bit of a 64-bit length must be 0.
            if length >> 63 != 0 {
                return Err(Error::Protocol("frame length out of range"));
            }
            if header.mask.is_some() {
                return Err(Error::Protocol("masked frame from the server"));
            }
            if header.rsv1 || header.rsv2 || header.rsv3 {
                return Err(Error::Protocol("reserved bit set"));
            }
            // Fits the buffer whole (a control frame always does).
            let whole = (header_length as u64 + length <= self.buf.len() as u64)
                .then_some(header_length + length as usize);
            match header.opcode {
                OpCode::Control(control) => {
                    let Some(frame) = whole.filter(|_| header.is_final && length <= 125) else {
                        return Err(Error::Protocol("control frame fragmented or too long"));
                    };
                    self.wait_for(frame).await?;
                    let range = self.start + header_length..self.start + frame;
                    match control {
                        Control::Ping => {
                            // Queued, and written if the socket takes it now, else by the
                            // next send: the reader waits for a send in progress, never for
                            // the socket.
                            let mut out = self.out.lock().await;
                            out.queue_pong(&self.buf[range]);
                            self.start += frame;
                            out.flush_now();
                        }
                        Control::Pong => {
                            self.start += frame;
                            return Ok(Ready::Buffered(header.opcode, range));
                        }
                        Control::Close => {
                            let close =
                                close_payload(&self.buf[range.clone()])?.map(|(code, _)| code);
                            let mut out = self.out.lock().await;
                            // Answered with its code (§5.5.1); nothing is sent after it.
                            out.queue_close(close.unwrap_or(1000), "");
                            self.start += frame;
                            out.flush_now();
                            return Ok(Ready::Buffered(header.opcode, range));
                        }
                        Control::Reserved(_) => return Err(Error::Protocol("reserved opcode")),
                    }
                }
                OpCode::Data(Data::Reserved(_)) => {
                    return Err(Error::Protocol("reserved opcode"));
                }
                OpCode::Data(Data::Continue) => {
                    if self.message.is_none() {
                        return Err(Error::Protocol("continuation of no message"));
                    }
                    self.start_spilling(header_length, length, header.is_final)?;
                }
                OpCode::Data(kind) => {
                    if self.message.is_some() {
                        return Err(Error::Protocol("a message inside a fragmented one"));
                    }
                    if length > self.max_message as u64 {
                        return Err(Error::TooLong(length));
                    }
                    if let Some(frame) = whole.filter(|_| header.is_final) {
                        self.wait_for(frame).await?;
                        let range = self.start + header_length..self.start + frame;
                        if kind == Data::Text
                            && std::str::from_utf8(&self.buf[range.clone()]).is_err()
                        {
                            return Err(Error::NotUtf8);
                        }
                        self.start += frame;
                        return Ok(Ready::Buffered(header.opcode, range));
                    }
                    self.message = Some(kind);
                    self.start_spilling(header_length, length, header.is_final)?;
                }
            }
        }
    }

    /// The next frame's header and payload length, and the header's length; nothing is
    /// consumed.
    async fn peek_header(&mut self) -> Result<(FrameHeader, u64, usize), Error> {
        loop {
            let mut cursor = Cursor::new(&self.buf[self.start..self.end]);
            match FrameHeader::parse(&mut cursor) {
                Ok(Some((header, length))) => {
                    return Ok((header, length, cursor.position() as usize));
                }
                Ok(None) => self.fill().await?,
                Err(_) => return Err(Error::Protocol("unreadable frame header")),
            }
        }
    }

    /// Consumes a frame's header; its payload goes to `spill`, which grows to take it.
    fn start_spilling(
        &mut self,
        header_length: usize,
        length: u64,
        ends: bool,
    ) -> Result<(), Error> {
        if length > self.max_message.saturating_sub(self.spill.len()) as u64 {
            return Err(Error::TooLong(self.spill.len() as u64 + length));
        }
        // A single frame: exactly its size. Fragments: room at least doubles (not a copy per
        // fragment), but never past `max_message`.
        let needed = self.spill.len() + length as usize;
        if needed > self.spill.capacity() {
            let room = needed.max(self.spill.capacity() * 2).min(self.max_message);
            self.spill.reserve_exact(room - self.spill.len());
        }
        self.start += header_length;
        self.spilling = Some((length, ends));
        Ok(())
    }

    /// Reads the rest of the current frame into `spill`: what the buffer holds, then straight
    /// from the connection, never past the frame.
    async fn read_spilled(&mut self) -> Result<(), Error> {
        while let Some((left, ends)) = self.spilling.filter(|(left, _)| *left > 0) {
            let read = if self.start < self.end {
                let n = (self.end - self.start).min(left as usize);
                self.spill
                    .extend_from_slice(&self.buf[self.start..self.start + n]);
                self.start += n;
                n
            } else if !self.early.is_empty() {
                let n = self.early.len().min(left as usize);
                self.spill.extend_from_slice(&self.early[..n]);
                self.early.drain(..n);
                if self.early.is_empty() {
                    self.early = Vec::new();
                }
                n
            } else {
                let mut room = (&mut self.spill).limit(left as usize);
                match self.io.read_buf(&mut room).await? {
                    0 => return Err(Error::Eof),
                    n => n,
                }
            };
            self.spilling = Some((left - read as u64, ends));
        }
        Ok(())
    }

    /// Waits until the buffer holds `length` bytes from `start` (at most its size).
    async fn wait_for(&mut self, length: usize) -> Result<(), Error> {
        if self.start + length > self.buf.len() {
            self.compact();
        }
        while self.end - self.start < length {
            self.fill().await?;
        }
        Ok(())
    }

    fn compact(&mut self) {
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
    }

    /// Reads more into the buffer's free end, compacting it first when it is full.
    async fn fill(&mut self) -> Result<(), Error> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            self.compact();
        }
        let free = &mut self.buf[self.end..];
        let read = if self.early.is_empty() {
            self.io.read(free).await?
        } else {
            let n = free.len().min(self.early.len());
            free[..n].copy_from_slice(&self.early[..n]);
            self.early.drain(..n);
            if self.early.is_empty() {
                self.early = Vec::new();
            }
            n
        };
        if read == 0 {
            return Err(Error::Eof);
        }
        self.end += read;
        Ok(())
    }
}

/// A close frame's code and reason, checked (RFC 6455 §5.5.1): empty, or a code an endpoint
/// may send and a UTF-8 reason.
fn close_payload(payload: &[u8]) -> Result<Option<(u16, &str)>, Error> {
    match payload {
        [] => Ok(None),
        [_] => Err(Error::Protocol("close code cut short")),
        [high, low, reason @ ..] => {
            let code = u16::from_be_bytes([*high, *low]);
            // §7.4: the codes an endpoint may send; 1005, 1006 and 1015 are for reporting only.
            if !matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
                return Err(Error::Protocol("close code not allowed"));
            }
            let reason = std::str::from_utf8(reason).map_err(|_| Error::NotUtf8)?;
            Ok(Some((code, reason)))
        }
    }
}

/// A client frame to send.
#[derive(Debug, Clone, Copy)]
pub enum Outgoing<'a> {
    Text(&'a str),
    Binary(&'a [u8]),
    Ping(&'a [u8]),
}

/// The writing half.
pub struct Writer<S = Stream> {
    out: Arc<Mutex<Out<S>>>,
}

impl<S: AsyncRead + AsyncWrite> Writer<S> {
    /// Sends `frames` in one write.
    pub async fn send(&mut self, frames: &[Outgoing<'_>]) -> Result<(), Error> {
        let mut out = self.out.lock().await;
        if out.closed {
            // What was queued before the close (the close itself, a reply the reader could
            // not write at once) still goes.
            if out.written < out.buf.len() {
                let _ = out.flush().await;
            }
            return Err(Error::Closed);
        }
        if frames
            .iter()
            .any(|frame| matches!(frame, Outgoing::Ping(payload) if payload.len() > 125))
        {
            return Err(Error::Protocol("ping payload over 125 bytes"));
        }
        for frame in frames {
            match *frame {
                Outgoing::Text(text) => out.frame(OpCode::Data(Data::Text), text.as_bytes()),
                Outgoing::Binary(bytes) => out.frame(OpCode::Data(Data::Binary), bytes),
                Outgoing::Ping(payload) => out.frame(OpCode::Control(Control::Ping), payload),
            }
        }
        out.flush().await
    }

    /// Sends a close frame with `code` and `reason` (cut to fit 123 bytes); nothing can be sent
    /// after it. The server answers it and closes the connection, which the reader sees.
    pub async fn close(&mut self, code: u16, reason: &str) -> Result<(), Error> {
        self.out.lock().await.close(code, reason).await
    }
}

/// The write side both halves use: the writer for its frames, the reader for its answers
/// to pings and closes.
struct Out<S> {
    io: WriteHalf<S>,
    /// Frames not yet written; `buf[written..]` is what is left of them. Kept here, not in a
    /// future, so that a write cancelled halfway goes on with the next one.
    buf: Vec<u8>,
    written: usize,
    /// The write buffer's size between writes.
    keep: usize,
    /// A close frame was queued, or a write failed: nothing more is queued.
    closed: bool,
}

impl<S: AsyncRead + AsyncWrite> Out<S> {
    /// Adds a masked frame to the buffer (every client frame is masked, with a fresh key:
    /// RFC 6455 §5.3).
    fn frame(&mut self, opcode: OpCode, payload: &[u8]) {
        let mask: [u8; 4] = rand::random();
        let header = FrameHeader {
            is_final: true,
            rsv1: false,
            rsv2: false,
            rsv3: false,
            opcode,
            mask: Some(mask),
        };
        // Writing to a Vec cannot fail.
        let _ = header.format(payload.len() as u64, &mut self.buf);
        let at = self.buf.len();
        self.buf.extend_from_slice(payload);
        for (i, byte) in self.buf[at..].iter_mut().enumerate() {
            *byte ^= mask[i & 3];
        }
    }

    /// Writes what is queued. After a failed write the connection takes nothing more.
    async fn flush(&mut self) -> Result<(), Error> {
        let written = self.write_queued().await;
        if written.is_err() {
            self.closed = true;
        }
        self.buf.clear();
        self.written = 0;
        if self.buf.capacity() > self.keep {
            self.buf.shrink_to(self.keep);
        }
        written
    }

    async fn write_queued(&mut self) -> Result<(), Error> {
        while self.written < self.buf.len() {
            match self.io.write(&self.buf[self.written..]).await? {
                0 => return Err(Error::Io(std::io::ErrorKind::WriteZero.into())),
                n => self.written += n,
            }
        }
        self.io.flush().await?;
        Ok(())
    }

    /// Writes what is queued if the socket takes it now; what it does not take stays queued
    /// for the next write (the buffer keeps how far it got).
    fn flush_now(&mut self) {
        // Unconstrained: a task that has used its cooperative budget on reads would get
        // `Pending` from a socket that is writable.
        let _ = tokio::task::unconstrained(self.flush()).now_or_never();
    }

    /// Queues a pong unless the socket has not taken what is queued already (a server that
    /// pings without reading would make the queue grow): the latest ping may go unanswered
    /// then, as RFC 6455 §5.5.3 allows.
    fn queue_pong(&mut self, payload: &[u8]) {
        if !self.closed && self.buf.len() - self.written <= self.keep {
            self.frame(OpCode::Control(Control::Pong), payload);
        }
    }

    fn queue_close(&mut self, code: u16, reason: &str) {
        if self.closed {
            return;
        }
        self.closed = true;
        let mut payload = Vec::with_capacity(2 + reason.len());
        payload.extend_from_slice(&code.to_be_bytes());
        // A close frame's payload is at most 125 bytes: the reason is cut on a character.
        let mut cut = reason.len().min(123);
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        payload.extend_from_slice(&reason.as_bytes()[..cut]);
        self.frame(OpCode::Control(Control::Close), &payload);
    }

    /// Queues a close (unless one was) and writes whatever is queued.
    async fn close(&mut self, code: u16, reason: &str) -> Result<(), Error> {
        self.queue_close(code, reason);
        self.flush().await
    }
}

/// A server's bytes read through a connection, handed over a few at a time: what the fuzz
/// target (`fuzz/fuzz_targets/ws_client_frames.rs`) and the tests compare, since a message's
/// reading must not depend on how its bytes were cut.
#[cfg(any(test, fuzzing))]
pub mod scripted {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

    use super::{Incoming, Options, over};

    /// What one read gave, owned so that two readings can be compared.
    #[derive(Debug, PartialEq)]
    pub enum Read {
        Text(String),
        Binary(Vec<u8>),
        Pong(Vec<u8>),
        Close(Option<(u16, String)>),
        /// The error that ended reading, as displayed.
        Error(String),
    }

    /// Reads everything `server` sent until the connection is done: the first `early` bytes
    /// as if they had come with the handshake's response, the rest at most `chunk` bytes a
    /// read. The client's writes (pongs, close replies) are taken and dropped.
    pub fn read_all(server: &[u8], early: usize, chunk: usize, options: Options) -> Vec<Read> {
        let early = early.min(server.len());
        let transport = Trickle {
            rest: &server[early..],
            chunk: chunk.max(1),
        };
        let (mut reader, _writer) = over(transport, &server[..early], options);
        let mut reads = Vec::new();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime needs no resources");
        runtime.block_on(async {
            loop {
                let read = match reader.next().await {
                    Ok(Incoming::Text(text)) => Read::Text(text.to_owned()),
                    Ok(Incoming::Binary(bytes)) => Read::Binary(bytes.to_vec()),
                    Ok(Incoming::Pong(bytes)) => Read::Pong(bytes.to_vec()),
                    Ok(Incoming::Close(close)) => {
                        Read::Close(close.map(|(code, reason)| (code, reason.to_owned())))
                    }
                    Err(error) => Read::Error(error.to_string()),
                };
                let done = matches!(read, Read::Close(_) | Read::Error(_));
                reads.push(read);
                if done {
                    break;
                }
            }
        });
        reads
    }

    /// A transport that hands over at most `chunk` bytes a read and takes every write.
    struct Trickle<'a> {
        rest: &'a [u8],
        chunk: usize,
    }

    impl AsyncRead for Trickle<'_> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let n = self.rest.len().min(self.chunk).min(buf.remaining());
            let (now, rest) = self.rest.split_at(n);
            buf.put_slice(now);
            self.rest = rest;
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Trickle<'_> {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bytes: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            Poll::Ready(Ok(bytes.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio::net::TcpListener;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;

    const OPTIONS: Options = Options {
        read_buffer: 512,
        write_buffer: 256,
        max_message: 1 << 20,
        handshake_timeout: Duration::from_secs(5),
    };

    async fn open(port: u16) -> Socket {
        open_with(port, OPTIONS).await
    }

    async fn open_with(port: u16, options: Options) -> Socket {
        let request = format!("ws://127.0.0.1:{port}/v3/ws?x=1")
            .into_client_request()
            .unwrap();
        connect(request, &crate::tls::websocket_client_config(), options)
            .await
            .unwrap()
    }

    /// A tungstenite server on a free port; `serve` runs on its one connection.
    async fn tungstenite_server<F, Fut>(serve: F) -> (u16, tokio::task::JoinHandle<()>)
    where
        F: FnOnce(tokio_tungstenite::WebSocketStream<TcpStream>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            serve(tokio_tungstenite::accept_async(tcp).await.unwrap()).await;
        });
        (port, task)
    }

    /// A server that answers the upgrade with `response(key)` and then writes `after` raw,
    /// handing back what the client sent once the client closes.
    async fn raw_server(
        response: impl FnOnce(&str) -> String + Send + 'static,
        after: Vec<u8>,
    ) -> (u16, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let key = upgrade_key(&mut tcp).await;
            let mut head = response(&key).into_bytes();
            head.extend_from_slice(&after);
            tcp.write_all(&head).await.unwrap();
            let mut sent = Vec::new();
            let _ = tcp.read_to_end(&mut sent).await;
            sent
        });
        (port, task)
    }

    /// Reads a client's upgrade request, byte by byte so that nothing after it is taken,
    /// and returns its key.
    async fn upgrade_key(tcp: &mut TcpStream) -> String {
        let mut request = Vec::new();
        while !request.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            tcp.read_exact(&mut byte).await.unwrap();
            request.push(byte[0]);
        }
        String::from_utf8(request)
            .unwrap()
            .lines()
            .find_map(|line| line.strip_prefix("Sec-WebSocket-Key: "))
            .unwrap()
            .to_owned()
    }

    fn upgrade(key: &str) -> String {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
            derive_accept_key(key.as_bytes())
        )
    }

    /// A server frame: unmasked unless told.
    fn frame(first: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut out = vec![first];
        let masked = if mask.is_some() { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => out.push(masked | n as u8),
            n if n <= 0xFFFF => {
                out.push(masked | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(masked | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        match mask {
            Some(key) => {
                out.extend_from_slice(&key);
                out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i & 3]));
            }
            None => out.extend_from_slice(payload),
        }
        out
    }

    /// The frames a client sent, unmasked: (first byte, payload).
    fn client_frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut frames = Vec::new();
        while !bytes.is_empty() {
            let mut cursor = Cursor::new(bytes);
            let (header, length) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
            let at = cursor.position() as usize;
            let mask = header.mask.expect("every client frame is masked");
            let payload: Vec<u8> = bytes[at..at + length as usize]
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i & 3])
                .collect();
            frames.push((bytes[0], payload));
            bytes = &bytes[at + length as usize..];
        }
        frames
    }

    #[tokio::test]
    async fn messages_round_trip_with_a_tungstenite_server() {
        let (port, server) = tungstenite_server(|mut ws| async move {
            // Until the close handshake ends (tungstenite answers a close on its next read).
            while let Some(Ok(message)) = ws.next().await {
                if message.is_text() || message.is_binary() {
                    ws.send(message).await.unwrap();
                }
            }
        })
        .await;
        let mut socket = open(port).await;
        let large = "x".repeat(100_000);
        socket
            .writer
            .send(&[
                Outgoing::Text("hello"),
                Outgoing::Binary(&[1, 2, 3]),
                Outgoing::Ping(b"p1"),
                Outgoing::Text(&large),
            ])
            .await
            .unwrap();
        assert_eq!(socket.reader.next().await.unwrap(), Incoming::Text("hello"));
        assert_eq!(
            socket.reader.next().await.unwrap(),
            Incoming::Binary(&[1, 2, 3])
        );
        assert_eq!(socket.reader.next().await.unwrap(), Incoming::Pong(b"p1"));
        assert_eq!(
            socket.reader.next().await.unwrap(),
            Incoming::Text(large.as_str())
        );
        assert!(socket.reader.spill.capacity() >= large.len());
        socket
            .writer
            .send(&[Outgoing::Text("after")])
            .await
            .unwrap();
        assert_eq!(socket.reader.next().await.unwrap(), Incoming::Text("after"));
        // The large message's buffer went with it, and the write buffer is back to its size.
        assert_eq!(socket.reader.spill.capacity(), 0);
        assert!(socket.writer.out.lock().await.buf.capacity() <= OPTIONS.write_buffer);
        socket.writer.close(1000, "done").await.unwrap();
        assert!(matches!(
            socket.reader.next().await,
            Ok(Incoming::Close(Some((1000, _))))
        ));
        // Nothing is read after a close.
        assert!(matches!(socket.reader.next().await, Err(Error::Closed)));
        server.await.unwrap();
    }

    #[tokio::test]
    async fn fragments_and_pings_between_them_are_read_and_pings_answered() {
        let (port, server) = tungstenite_server(|mut ws| async move {
            for frame in [
                Frame::message(b"frag".to_vec(), OpCode::Data(Data::Text), false),
                Frame::ping(b"keepalive".to_vec()),
                Frame::message(b"mented".to_vec(), OpCode::Data(Data::Continue), true),
            ] {
                ws.send(Message::Frame(frame)).await.unwrap();
            }
            // The client's answer to the ping.
            loop {
                match ws.next().await {
                    Some(Ok(Message::Pong(payload))) => {
                        assert_eq!(&payload[..], b"keepalive");
                        break;
                    }
                    Some(Ok(_)) => {}
                    other => panic!("no pong: {other:?}"),
                }
            }
            ws.close(None).await.unwrap();
        })
        .await;
        let mut socket = open(port).await;
        assert_eq!(
            socket.reader.next().await.unwrap(),
            Incoming::Text("fragmented")
        );
        assert_eq!(socket.reader.next().await.unwrap(), Incoming::Close(None));
        server.await.unwrap();
    }

    #[tokio::test]
    async fn frames_that_came_with_the_response_are_read_first_even_past_the_buffer() {
        let mut after = frame(0x81, br#"{"type":"Begin"}"#, None);
        let long = vec![7u8; 3 * OPTIONS.read_buffer];
        after.extend(frame(0x82, &long, None));
        after.extend(frame(0x81, b"last", None));
        let (port, server) = raw_server(upgrade, after).await;
        let mut socket = open(port).await;
        // The server's write came in one piece, more than the buffer holds.
        assert!(!socket.reader.early.is_empty());
        assert_eq!(
            socket.reader.next().await.unwrap(),
            Incoming::Text(r#"{"type":"Begin"}"#)
        );
        assert_eq!(
            socket.reader.next().await.unwrap(),
            Incoming::Binary(long.as_slice())
        );
        assert_eq!(socket.reader.next().await.unwrap(), Incoming::Text("last"));
        drop(socket);
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_refused_or_wrong_upgrade_fails_the_connection() {
        type Respond = fn(&str) -> String;
        let cases: [(Respond, &str); 7] = [
            (
                |_| "HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n".to_owned(),
                "HTTP error: 401 Unauthorized",
            ),
            (
                |key| upgrade(key).replace("Connection: Upgrade\r\n", ""),
                "WebSocket handshake refused: no Connection: upgrade",
            ),
            (
                |key| upgrade(key).replace("\r\n\r\n", "\r\nSec-WebSocket-Protocol: chat\r\n\r\n"),
                "WebSocket handshake refused: a subprotocol we did not offer",
            ),
            (
                |key| {
                    let padding = format!("X-Padding: {}\r\n", "p".repeat(MAX_RESPONSE_HEAD));
                    upgrade(key).replace("\r\n\r\n", &format!("\r\n{padding}\r\n"))
                },
                "WebSocket handshake refused: response head too long",
            ),
            (
                |_| upgrade("not the key"),
                "WebSocket handshake refused: wrong Sec-WebSocket-Accept",
            ),
            (
                |key| upgrade(key).replace("Upgrade: websocket", "Upgrade: h2c"),
                "WebSocket handshake refused: no Upgrade: websocket",
            ),
            (
                |key| {
                    upgrade(key).replace(
                        "\r\n\r\n",
                        "\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n",
                    )
                },
                "WebSocket handshake refused: an extension we did not offer",
            ),
        ];
        for (response, expected) in cases {
            let (port, _server) = raw_server(response, Vec::new()).await;
            let request = format!("ws://127.0.0.1:{port}/")
                .into_client_request()
                .unwrap();
            let error = connect(request, &crate::tls::websocket_client_config(), OPTIONS)
                .await
                .err()
                .expect("connect fails");
            assert_eq!(error.to_string(), expected);
        }
    }

    #[tokio::test]
    async fn a_masked_server_frame_fails_the_connection_with_1002() {
        let (port, server) = raw_server(upgrade, frame(0x81, b"hi", Some([1, 2, 3, 4]))).await;
        let mut socket = open(port).await;
        assert!(matches!(
            socket.reader.next().await,
            Err(Error::Protocol("masked frame from the server"))
        ));
        drop(socket);
        let sent = client_frames(&server.await.unwrap());
        assert_eq!(sent, vec![(0x88, 1002u16.to_be_bytes().to_vec())]);
    }

    #[tokio::test]
    async fn text_that_is_not_utf8_fails_the_connection_with_1007() {
        let (port, server) = raw_server(upgrade, frame(0x81, &[0xff, 0xfe], None)).await;
        let mut socket = open(port).await;
        assert!(matches!(socket.reader.next().await, Err(Error::NotUtf8)));
        drop(socket);
        let sent = client_frames(&server.await.unwrap());
        assert_eq!(sent, vec![(0x88, 1007u16.to_be_bytes().to_vec())]);
    }

    #[tokio::test]
    async fn a_message_over_the_limit_fails_the_connection_with_1009() {
        let (port, server) = raw_server(upgrade, frame(0x82, &[0; 200], None)).await;
        let options = Options {
            max_message: 100,
            ..OPTIONS
        };
        let mut socket = open_with(port, options).await;
        assert!(matches!(
            socket.reader.next().await,
            Err(Error::TooLong(200))
        ));
        drop(socket);
        let sent = client_frames(&server.await.unwrap());
        assert_eq!(sent, vec![(0x88, 1009u16.to_be_bytes().to_vec())]);
    }

    #[tokio::test]
    async fn a_close_is_answered_with_its_code_and_nothing_is_sent_after_it() {
        let mut close = 4001u16.to_be_bytes().to_vec();
        close.extend_from_slice(b"session expired");
        let (port, server) = raw_server(upgrade, frame(0x88, &close, None)).await;
        let mut socket = open(port).await;
        assert_eq!(
            socket.reader.next().await.unwrap(),
            Incoming::Close(Some((4001, "session expired")))
        );
        assert!(matches!(
            socket.writer.send(&[Outgoing::Text("late")]).await,
            Err(Error::Closed)
        ));
        drop(socket);
        let sent = client_frames(&server.await.unwrap());
        assert_eq!(sent, vec![(0x88, 4001u16.to_be_bytes().to_vec())]);
    }

    /// Every read cut short by a timeout, over frames that come a few bytes at a time: what
    /// was read is kept, so the messages come out whole and in order.
    #[tokio::test]
    async fn a_cancelled_read_loses_nothing() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let small = b"fits the buffer".to_vec();
        let large = vec![9u8; 2_000];
        let mut stream = frame(0x82, &small, None);
        stream.extend(frame(0x89, b"ping", None));
        stream.extend(frame(0x82, &large, None));
        stream.extend(frame(0x02, b"fra", None));
        stream.extend(frame(0x80, b"gment", None));
        let server = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let key = upgrade_key(&mut tcp).await;
            tcp.write_all(upgrade(&key).as_bytes()).await.unwrap();
            for chunk in stream.chunks(37) {
                tcp.write_all(chunk).await.unwrap();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let mut sent = Vec::new();
            let _ = tcp.read_to_end(&mut sent).await;
            sent
        });
        let mut socket = open(port).await;
        let mut got = Vec::new();
        while got.len() < 3 {
            if let Ok(incoming) =
                tokio::time::timeout(Duration::from_micros(500), socket.reader.next()).await
            {
                got.push(match incoming.unwrap() {
                    Incoming::Binary(bytes) => bytes.to_vec(),
                    other => panic!("unexpected {other:?}"),
                });
            }
        }
        assert_eq!(got, vec![small, large, b"fragment".to_vec()]);
        drop(socket);
        let sent = client_frames(&server.await.unwrap());
        assert_eq!(sent, vec![(0x8A, b"ping".to_vec())]);
    }

    /// What the client sent back after `after` was read: the frames, each (first byte,
    /// payload), and the error the read gave.
    async fn answer_to(after: Vec<u8>, options: Options) -> (Error, Vec<(u8, Vec<u8>)>) {
        let (port, server) = raw_server(upgrade, after).await;
        let mut socket = open_with(port, options).await;
        let error = loop {
            match socket.reader.next().await {
                Ok(_) => continue,
                Err(error) => break error,
            }
        };
        // Sticky: nothing more is read.
        assert!(matches!(socket.reader.next().await, Err(Error::Closed)));
        drop(socket);
        (error, client_frames(&server.await.unwrap()))
    }

    fn close_with(code: u16) -> Vec<(u8, Vec<u8>)> {
        vec![(0x88, code.to_be_bytes().to_vec())]
    }

    #[tokio::test]
    async fn a_fragment_whose_length_overflows_fails_the_connection_without_a_panic() {
        let mut after = frame(0x01, b"a", None);
        after.extend_from_slice(&[0x80, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]);
        let (error, sent) = answer_to(after, OPTIONS).await;
        assert!(matches!(
            error,
            Error::Protocol("frame length out of range")
        ));
        assert_eq!(sent, close_with(1002));
        // The largest length RFC 6455 allows, on a message already begun: over the limit.
        let mut after = frame(0x01, b"a", None);
        after.extend_from_slice(&[0x80, 0x7F, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]);
        let (error, sent) = answer_to(after, OPTIONS).await;
        assert!(matches!(error, Error::TooLong(_)), "{error}");
        assert_eq!(sent, close_with(1009));
    }

    #[tokio::test]
    async fn fragments_over_the_limit_together_fail_the_connection_with_1009() {
        let options = Options {
            max_message: 100,
            ..OPTIONS
        };
        let mut after = frame(0x02, &[1; 60], None);
        after.extend(frame(0x80, &[2; 60], None));
        let (error, sent) = answer_to(after, options).await;
        assert!(matches!(error, Error::TooLong(120)), "{error}");
        assert_eq!(sent, close_with(1009));
    }

    #[tokio::test]
    async fn a_message_in_fragments_never_takes_more_than_the_limit() {
        let mut after = frame(0x02, &[1; 60], None);
        after.extend(frame(0x80, &[2; 40], None));
        let (port, _server) = raw_server(upgrade, after).await;
        let options = Options {
            max_message: 100,
            ..OPTIONS
        };
        let mut socket = open_with(port, options).await;
        let Incoming::Binary(message) = socket.reader.next().await.unwrap() else {
            panic!("not binary");
        };
        assert_eq!(message.len(), 100);
        // Doubling the first fragment's 60 bytes would have taken 120.
        assert!(socket.reader.spill.capacity() <= 100);
    }

    #[tokio::test]
    async fn a_close_with_a_code_no_endpoint_may_send_is_answered_with_1002() {
        for code in [999u16, 1005, 1006, 1015, 5000] {
            let (error, sent) = answer_to(frame(0x88, &code.to_be_bytes(), None), OPTIONS).await;
            assert!(
                matches!(error, Error::Protocol("close code not allowed")),
                "{code}"
            );
            assert_eq!(sent, close_with(1002), "{code}");
        }
    }

    /// Server frames, unmasked, as bytes on the wire.
    fn wire(frames: Vec<Frame>) -> Vec<u8> {
        let mut bytes = Vec::new();
        for frame in frames {
            frame.format(&mut bytes).unwrap();
        }
        bytes
    }

    /// However the server's bytes are cut (one at a time, a few, part with the handshake's
    /// response), the same messages come out, and the same error ends them.
    #[test]
    fn a_reading_does_not_depend_on_how_the_bytes_were_cut() {
        use scripted::{Read, read_all};
        let long = "w".repeat(3_000);
        let message = |payload: &[u8], data: Data, last: bool| {
            Frame::message(payload.to_vec(), OpCode::Data(data), last)
        };
        let good = wire(vec![
            message(b"short", Data::Text, true),
            message(long.as_bytes(), Data::Text, true),
            message(b"frag", Data::Binary, false),
            Frame::ping(b"keepalive".to_vec()),
            message(&[7; 700], Data::Continue, true),
            Frame::pong(b"p".to_vec()),
            Frame::close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: 1000.into(),
                reason: "bye".into(),
            })),
        ]);
        let expected = vec![
            Read::Text("short".to_owned()),
            Read::Text(long.clone()),
            Read::Binary([b"frag".to_vec(), vec![7; 700]].concat()),
            Read::Pong(b"p".to_vec()),
            Read::Close(Some((1000, "bye".to_owned()))),
        ];
        // A message over the limit, after one that is not; then bytes cut short.
        let mut bad = wire(vec![message(b"fine", Data::Text, true)]);
        bad.extend(wire(vec![message(&[1; 5_000], Data::Binary, true)]));
        let mut cut = wire(vec![message(b"whole", Data::Text, true)]);
        cut.extend(&wire(vec![message(long.as_bytes(), Data::Text, true)])[..1_000]);
        let options = Options {
            max_message: 4_096,
            ..OPTIONS
        };
        let cases = [
            (&good, expected),
            (
                &bad,
                vec![
                    Read::Text("fine".to_owned()),
                    Read::Error(Error::TooLong(5_000).to_string()),
                ],
            ),
            (
                &cut,
                vec![
                    Read::Text("whole".to_owned()),
                    Read::Error(Error::Eof.to_string()),
                ],
            ),
        ];
        for (server, expected) in cases {
            assert_eq!(read_all(server, 0, usize::MAX, options), expected);
            for chunk in [1, 2, 3, 7, 64, 513] {
                for early in [0, 5, 600, server.len()] {
                    assert_eq!(
                        read_all(server, early, chunk, options),
                        expected,
                        "{chunk} bytes a read, {early} with the response"
                    );
                }
            }
        }
    }
}
