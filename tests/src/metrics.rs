//! Scraping the target's Prometheus endpoint and reading samples out of the text.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

/// `GET /metrics` from `addr`: the status line and the body.
pub fn scrape(addr: SocketAddr) -> io::Result<(String, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nAccept: text/plain\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let (head, body) = out
        .split_once("\r\n\r\n")
        .ok_or_else(|| io::Error::other(format!("not an HTTP answer: {out:?}")))?;
    Ok((head.to_string(), body.to_string()))
}

/// The value of the sample `series` (name and labels exactly as exposed), if present.
pub fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
}

/// Prometheus's `promtool` (Debian package `prometheus`), when installed.
pub fn promtool() -> Option<PathBuf> {
    let p = PathBuf::from("/usr/bin/promtool");
    p.is_file().then_some(p)
}

/// `promtool check metrics` on `text`: Ok, or what promtool said is wrong.
pub fn promtool_check(promtool: &PathBuf, text: &str) -> io::Result<Result<(), String>> {
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .ok_or_else(|| io::Error::other("no stdin"))?
        .write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    Ok(if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    })
}
