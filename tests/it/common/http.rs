//! A tiny HTTP/1.1 server on 127.0.0.1 for tests: one thread per connection, one request per connection
//! (`Connection: close`), every request logged, and replies that misbehave the way real servers do (cut
//! bodies, resets, delays).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    pub headers: Vec<(String, String)>,
    /// When it arrived, relative to the server's start.
    pub at: Duration,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or(&self.target)
    }
    pub fn query(&self) -> &str {
        self.target.split_once('?').map(|(_, q)| q).unwrap_or("")
    }
}

pub enum Reply {
    Full {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// Declares the whole body's length, sends `cut` bytes of it, then closes (with a TCP reset if `reset`).
    Cut {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        cut: usize,
        reset: bool,
    },
    /// Sends the head at once, then each piece of the body after its wait. Chunked (no Content-Length; an
    /// empty piece sends nothing, and the terminating chunk goes last) or with the pieces' total declared.
    Streamed {
        status: u16,
        headers: Vec<(String, String)>,
        pieces: Vec<(Duration, Vec<u8>)>,
        chunked: bool,
    },
    /// Waits, then replies.
    Delay(Duration, Box<Reply>),
    /// Closes the connection without a word.
    Hangup,
}

impl Reply {
    pub fn ok(content_type: &str, body: impl Into<Vec<u8>>) -> Reply {
        Reply::Full { status: 200, headers: vec![("Content-Type".into(), content_type.into())], body: body.into() }
    }
    pub fn status(status: u16, body: &str) -> Reply {
        Reply::Full {
            status,
            headers: vec![("Content-Type".into(), "text/plain".into())],
            body: body.as_bytes().to_vec(),
        }
    }
    pub fn with_header(mut self, name: &str, value: &str) -> Reply {
        match &mut self {
            Reply::Full { headers, .. } | Reply::Cut { headers, .. } | Reply::Streamed { headers, .. } => {
                headers.push((name.into(), value.into()))
            }
            Reply::Delay(_, inner) => {
                let taken = std::mem::replace(inner.as_mut(), Reply::Hangup);
                **inner = taken.with_header(name, value);
            }
            Reply::Hangup => {}
        }
        self
    }
}

type Handler = dyn Fn(&Request) -> Reply + Send + Sync;

pub struct Server {
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<Request>>>,
}

impl Server {
    pub fn start(handler: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let addr = listener.local_addr().unwrap();
        let log: Arc<Mutex<Vec<Request>>> = Arc::default();
        let handler: Arc<Handler> = Arc::new(handler);
        let started = Instant::now();
        let server_log = log.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (handler, log) = (handler.clone(), server_log.clone());
                std::thread::spawn(move || serve(stream, &*handler, &log, started));
            }
        });
        Server { addr, log }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn requests(&self) -> Vec<Request> {
        self.log.lock().unwrap().clone()
    }

    pub fn clear(&self) {
        self.log.lock().unwrap().clear();
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

fn serve(stream: TcpStream, handler: &Handler, log: &Mutex<Vec<Request>>, started: Instant) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("/").to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.trim_end().split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let request = Request { method, target, headers, at: started.elapsed() };
    log.lock().unwrap().push(request.clone());
    let reply = handler(&request);
    write_reply(stream, reply, request.method == "HEAD");
}

fn write_reply(mut stream: TcpStream, reply: Reply, head: bool) {
    let (status, headers, body, cut, reset) = match reply {
        Reply::Full { status, headers, body } => {
            let n = body.len();
            (status, headers, body, n, false)
        }
        Reply::Cut { status, headers, body, cut, reset } => (status, headers, body, cut, reset),
        Reply::Streamed { status, headers, pieces, chunked } => {
            return write_streamed(stream, status, &headers, &pieces, chunked, head);
        }
        Reply::Delay(d, inner) => {
            std::thread::sleep(d);
            return write_reply(stream, *inner, head);
        }
        Reply::Hangup => return,
    };
    let _ = stream.write_all(head_of(status, &headers, &format!("Content-Length: {}", body.len())).as_bytes());
    if !head {
        let _ = stream.write_all(&body[..cut.min(body.len())]);
    }
    let _ = stream.flush();
    if reset {
        // SO_LINGER 0: close sends RST instead of FIN.
        let linger = libc::linger { l_onoff: 1, l_linger: 0 };
        use std::os::fd::AsRawFd;
        // SAFETY: setsockopt on a socket this thread owns, with a correctly sized option value.
        unsafe {
            libc::setsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                &linger as *const libc::linger as *const libc::c_void,
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            );
        }
    } else {
        let _ = stream.shutdown(std::net::Shutdown::Write);
        // Let the client read everything before the socket goes.
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The status line and headers, `framing` (Content-Length or Transfer-Encoding) and `Connection: close`.
fn head_of(status: u16, headers: &[(String, String)], framing: &str) -> String {
    let mut out = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str(&format!("{framing}\r\nConnection: close\r\n\r\n"));
    out
}

fn write_streamed(
    mut stream: TcpStream,
    status: u16,
    headers: &[(String, String)],
    pieces: &[(Duration, Vec<u8>)],
    chunked: bool,
    head: bool,
) {
    let framing = match chunked {
        true => "Transfer-Encoding: chunked".to_string(),
        false => format!("Content-Length: {}", pieces.iter().map(|(_, p)| p.len()).sum::<usize>()),
    };
    if stream.write_all(head_of(status, headers, &framing).as_bytes()).and_then(|_| stream.flush()).is_err() || head {
        return;
    }
    for (wait, piece) in pieces {
        std::thread::sleep(*wait);
        let sent = match chunked {
            _ if piece.is_empty() => Ok(()),
            true => stream
                .write_all(format!("{:x}\r\n", piece.len()).as_bytes())
                .and_then(|_| stream.write_all(piece))
                .and_then(|_| stream.write_all(b"\r\n")),
            false => stream.write_all(piece),
        };
        // The client hung up: nothing more to send.
        if sent.and_then(|_| stream.flush()).is_err() {
            return;
        }
    }
    if chunked {
        let _ = stream.write_all(b"0\r\n\r\n");
    }
    let _ = stream.shutdown(std::net::Shutdown::Write);
    // Let the client read everything before the socket goes.
    std::thread::sleep(Duration::from_millis(20));
}
