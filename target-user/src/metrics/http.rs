//! The metrics endpoint: a minimal HTTP/1.1 server on one thread. `GET /metrics` answers
//! 200 with the exposition text; anything else 404 (a request too large 431, one that is not
//! HTTP 400). One request per connection (`Connection: close`), one connection at a time.
//!
//! std's blocking `TcpListener` rather than a crate: a scraper asks every few seconds, so
//! a thread that serves one request at a time is enough, and it adds no dependency and no
//! async runtime to the target. A slow or silent client cannot hold it: the request head
//! is bounded ([`MAX_REQUEST`]) and the whole exchange must finish within a deadline.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::{CONTENT_TYPE, Metrics};

/// The longest request head taken (request line and headers); scrapers send a few hundred
/// bytes.
pub const MAX_REQUEST: usize = 8192;
/// How long one connection may take, from accept to the last byte of the answer.
pub const DEADLINE: Duration = Duration::from_secs(5);

/// Listens on `addr` and serves the metrics from a thread of its own for the life of the
/// process (it holds no state that needs a clean stop). Returns the address it listens on.
pub fn spawn(addr: SocketAddr, metrics: Arc<Metrics>) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || serve(&listener, &metrics, DEADLINE))?;
    info!("metrics: http://{local}/metrics");
    Ok(local)
}

fn serve(listener: &TcpListener, metrics: &Metrics, deadline: Duration) {
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                if let Err(e) = handle(stream, metrics, deadline) {
                    debug!(%peer, "metrics request failed: {e}");
                }
            }
            Err(e) => {
                // Out of descriptors and the like: do not spin on it.
                warn!("metrics endpoint: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics,
    NotFound,
    BadRequest,
}

/// Routes a request head (up to, not including, the blank line).
fn route(head: &[u8]) -> Route {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Ok(line) = std::str::from_utf8(line) else {
        return Route::BadRequest;
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if !version.starts_with("HTTP/1.") {
        return Route::BadRequest;
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    if method == "GET" && path == "/metrics" {
        Route::Metrics
    } else {
        Route::NotFound
    }
}

/// Reads one request head within `deadline` and answers it.
fn handle(mut s: TcpStream, metrics: &Metrics, deadline: Duration) -> io::Result<()> {
    let end = Instant::now() + deadline;
    let mut buf = [0u8; MAX_REQUEST];
    let mut n = 0;
    let head = loop {
        if let Some(p) = buf[..n].windows(4).position(|w| w == b"\r\n\r\n") {
            break Some(p);
        }
        if n == buf.len() {
            break None;
        }
        s.set_read_timeout(Some(remaining(end)?))?;
        match s.read(&mut buf[n..])? {
            0 => return Ok(()),
            got => n += got,
        }
    };
    let (status, body) = match head.map(|h| route(&buf[..h])) {
        None => (
            "431 Request Header Fields Too Large",
            "request too large\n".to_string(),
        ),
        Some(Route::BadRequest) => ("400 Bad Request", "bad request\n".to_string()),
        Some(Route::NotFound) => ("404 Not Found", "not found: try GET /metrics\n".to_string()),
        Some(Route::Metrics) => ("200 OK", metrics.encode()),
    };
    let content_type = if status.starts_with("200") {
        CONTENT_TYPE
    } else {
        "text/plain; charset=utf-8"
    };
    let answer = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut out = answer.as_bytes();
    while !out.is_empty() {
        s.set_write_timeout(Some(remaining(end)?))?;
        match s.write(out)? {
            0 => return Err(io::ErrorKind::WriteZero.into()),
            w => out = &out[w..],
        }
    }
    Ok(())
}

/// Time left before `end`; an error once it has passed.
fn remaining(end: Instant) -> io::Result<Duration> {
    let left = end.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"));
    }
    Ok(left)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_metrics_is_served() {
        assert_eq!(route(b"GET /metrics HTTP/1.1\r\nHost: x"), Route::Metrics);
        assert_eq!(route(b"GET /metrics?name[]=a HTTP/1.0"), Route::Metrics);
        assert_eq!(route(b"GET / HTTP/1.1"), Route::NotFound);
        assert_eq!(route(b"POST /metrics HTTP/1.1"), Route::NotFound);
        assert_eq!(route(b"GET /metricsx HTTP/1.1"), Route::NotFound);
        assert_eq!(route(b"GET /metrics"), Route::BadRequest);
        assert_eq!(route(b"GET /metrics SPDY/3"), Route::BadRequest);
        assert_eq!(route(b"\xff\xfe"), Route::BadRequest);
    }

    /// Sends `request` and reads the answer to its end.
    fn ask(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(request).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    fn server(deadline: Duration) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Metrics::new(&[], None);
        std::thread::spawn(move || serve(&listener, &metrics, deadline));
        addr
    }

    #[test]
    fn answers_scrapes_and_refuses_the_rest() {
        let addr = server(DEADLINE);
        let ok = ask(addr, b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"),
            "{ok}"
        );
        let (head, body) = ok.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("Content-Length: {}\r\n", body.len())),
            "{head}"
        );
        let missing = ask(addr, b"GET /other HTTP/1.1\r\n\r\n");
        assert!(missing.starts_with("HTTP/1.1 404 "), "{missing}");
        let big = vec![b'a'; MAX_REQUEST + 100];
        let mut s = TcpStream::connect(addr).unwrap();
        // The server answers once it has MAX_REQUEST bytes; the rest may meet a reset.
        let _ = s.write_all(&big);
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert!(out.starts_with("HTTP/1.1 431 "), "{out}");
    }

    #[test]
    fn a_silent_client_does_not_hold_the_endpoint() {
        let addr = server(Duration::from_millis(300));
        let _silent = TcpStream::connect(addr).unwrap();
        let started = Instant::now();
        let ok = ask(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK"), "{ok}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn a_slow_client_is_cut_off_at_the_deadline() {
        let addr = server(Duration::from_millis(300));
        let mut slow = TcpStream::connect(addr).unwrap();
        let started = Instant::now();
        // A byte every 100 ms never finishes a head; the server gives up at 300 ms.
        slow.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut closed = false;
        for _ in 0..30 {
            if slow.write_all(b"G").is_err() {
                closed = true;
                break;
            }
            let mut b = [0u8; 1];
            match slow.read(&mut b) {
                Ok(0) => closed = true,
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => closed = true,
                _ => {}
            }
            if closed {
                break;
            }
        }
        assert!(closed, "the slow client was never cut off");
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
