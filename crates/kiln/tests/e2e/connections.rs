//! Slow, silent and idle clients: a connection that does not finish its request headers
//! within `--header-timeout` (counted from its start, or from the end of its last
//! response) is closed, so such clients cannot hold the server's connections.

use std::time::Duration;

use hyper::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{Opts, TestApp};

/// Reads until the server closes the connection (end of stream or a reset).
async fn until_closed(stream: &mut TcpStream) {
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

#[tokio::test]
async fn clients_that_never_finish_their_headers_are_disconnected() {
    let app = TestApp::spawn_with(Opts {
        flags: vec!["--header-timeout".into(), "1s".into()],
        ..Opts::default()
    })
    .await;
    let mut silent = TcpStream::connect(app.addr()).await.unwrap();
    let mut slow = TcpStream::connect(app.addr()).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: kiln\r\n")
        .await
        .unwrap();
    // A keep-alive connection that got its answer and then says nothing more.
    let mut idle = TcpStream::connect(app.addr()).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: kiln\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    idle.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    // Far past the 1 s limit, and shorter than the 30 s default: a close within it is the
    // configured limit at work.
    for (name, stream) in [
        ("silent", &mut silent),
        ("slow", &mut slow),
        ("idle", &mut idle),
    ] {
        let closed = tokio::time::timeout(Duration::from_secs(15), until_closed(stream)).await;
        assert!(closed.is_ok(), "the {name} client's connection stayed open");
    }
    let resp = app.client.get(None, "/healthz").await;
    assert_eq!(resp.status, StatusCode::OK, "the server still answers");
}
