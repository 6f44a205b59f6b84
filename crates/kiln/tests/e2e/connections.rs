//! Slow and silent clients: a connection that does not finish its request headers within
//! `--header-timeout` is closed, so such clients cannot hold the server's connections.

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
    // Far past the 1 s limit, and shorter than the 30 s default: a close within it is the
    // configured limit at work.
    for (name, stream) in [("silent", &mut silent), ("slow", &mut slow)] {
        let closed = tokio::time::timeout(Duration::from_secs(15), until_closed(stream)).await;
        assert!(closed.is_ok(), "the {name} client's connection stayed open");
    }
    let resp = app.client.get(None, "/healthz").await;
    assert_eq!(resp.status, StatusCode::OK, "the server still answers");
}
