//! Plain HTTP requests to a node's port, as probes and tools make them:
//! `/readyz`, `/livez`, `/raft_stat`, `/flags`, `/metrics`.

/// A minimal HTTP/1.0 GET for probes (`/readyz`, `/healthz`) from tools and
/// tests: returns the status code and body.
pub async fn probe(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    request(addr, "GET", path).await
}

/// One HTTP/1.0 request without a body (`GET`, or `POST` with the query
/// string carrying the arguments); returns the status code and body.
pub async fn request(addr: &str, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = crate::dial::tcp(addr).await?;
    s.write_all(
        format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf);
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP response")
        })?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}
