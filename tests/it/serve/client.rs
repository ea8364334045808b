//! A minimal HTTP/1.1 client for the serving tests (std only): one request per connection
//! (`Connection: close`), chunked bodies decoded, server-sent events read one at a time so a
//! test can stop reading and hang up mid-stream. Raw bytes go out as given (invalid UTF-8,
//! broken JSON).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

/// A whole response.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}: body is not JSON ({e}): {}",
                self.status,
                self.text()
            )
        })
    }
    /// The `data:` payloads of a server-sent event stream, in order.
    pub fn events(&self) -> Vec<String> {
        self.text()
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .map(str::to_string)
            .collect()
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    // A hang guard, not a timing assertion.
    s.set_read_timeout(Some(Duration::from_secs(300))).ok();
    s
}

fn send(s: &mut TcpStream, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    // The server may answer (413) and close before it has read a large body.
    let _ = s
        .write_all(head.as_bytes())
        .and_then(|()| s.write_all(body));
}

/// The status line and headers.
fn read_head(r: &mut BufReader<TcpStream>) -> (u16, Vec<(String, String)>) {
    let mut line = String::new();
    r.read_line(&mut line).expect("status line");
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).expect("header line");
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    (status, headers)
}

/// A body's bytes as they arrive, chunked framing removed.
pub struct BodyReader {
    inner: BufReader<TcpStream>,
    chunked: bool,
    /// Bytes left in the current chunk; `None` between chunks.
    left: Option<usize>,
    ended: bool,
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if !self.chunked {
            return self.inner.read(buf);
        }
        if self.ended {
            return Ok(0);
        }
        let left = match self.left {
            Some(n) if n > 0 => n,
            _ => {
                if self.left == Some(0) {
                    let mut crlf = String::new();
                    self.inner.read_line(&mut crlf)?;
                }
                let mut size = String::new();
                if self.inner.read_line(&mut size)? == 0 {
                    self.ended = true;
                    return Ok(0);
                }
                let n = usize::from_str_radix(size.trim(), 16).map_err(|e| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("chunk size {size:?}: {e}"),
                    )
                })?;
                if n == 0 {
                    self.ended = true;
                    return Ok(0);
                }
                n
            }
        };
        let want = left.min(buf.len());
        let got = self.inner.read(&mut buf[..want])?;
        self.left = Some(left - got);
        Ok(got)
    }
}

/// A streamed response read event by event.
pub struct EventStream {
    pub status: u16,
    reader: BufReader<BodyReader>,
}

impl EventStream {
    /// The next `data:` payload; `None` at the end of the body.
    pub fn next_event(&mut self) -> Option<String> {
        let mut line = String::new();
        loop {
            line.clear();
            if self.reader.read_line(&mut line).ok()? == 0 {
                return None;
            }
            if let Some(data) = line.trim_end_matches('\n').strip_prefix("data: ") {
                return Some(data.to_string());
            }
        }
    }
}

fn open(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, BodyReader) {
    let mut s = connect(addr);
    send(&mut s, method, path, headers, body);
    let mut r = BufReader::new(s);
    let (status, h) = read_head(&mut r);
    let chunked = h
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = BodyReader {
        inner: r,
        chunked,
        left: None,
        ended: false,
    };
    (status, h, body)
}

/// One request, the whole response.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let (status, headers, mut r) = open(addr, method, path, headers, body);
    let mut body = Vec::new();
    r.read_to_end(&mut body).expect("response body");
    Reply {
        status,
        headers,
        body,
    }
}

pub fn post(addr: SocketAddr, path: &str, body: &Value) -> Reply {
    request(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    )
}

pub fn get(addr: SocketAddr, path: &str) -> Reply {
    request(addr, "GET", path, &[], b"")
}

/// A streaming request, read as it arrives.
pub fn post_stream(addr: SocketAddr, path: &str, body: &Value) -> EventStream {
    let (status, _, r) = open(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    );
    EventStream {
        status,
        reader: BufReader::new(r),
    }
}
