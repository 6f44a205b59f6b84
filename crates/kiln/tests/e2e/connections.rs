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

/// Sends a request for `/healthz` on `stream` and reads the whole answer; returns the
/// start of its status line.
async fn healthz(stream: &mut TcpStream) -> std::io::Result<[u8; 12]> {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: kiln\r\n\r\n")
        .await?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    let body_from = loop {
        if let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        match stream.read(&mut buf).await? {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => answer.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&answer[..body_from]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while answer.len() < body_from + length {
        match stream.read(&mut buf).await? {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => answer.extend_from_slice(&buf[..n]),
        }
    }
    let mut status = [0u8; 12];
    status.copy_from_slice(&answer[..12]);
    Ok(status)
}

#[tokio::test]
async fn connections_beyond_the_cap_are_closed_until_one_ends() {
    const CAP: usize = 4;
    let app = TestApp::spawn_with(Opts {
        flags: vec!["--max-connections".into(), CAP.to_string()],
        ..Opts::default()
    })
    .await;
    // Slow clients take the places one by one (connected, answered once, silent since)
    // until one is closed without an answer. The test's own HTTP client may keep an idle
    // connection too, so fewer than CAP may get in, never more.
    let mut held = Vec::new();
    let mut refused = false;
    for _ in 0..CAP + 2 {
        let mut stream = TcpStream::connect(app.addr()).await.unwrap();
        match healthz(&mut stream).await {
            Ok(head) => {
                assert_eq!(&head, b"HTTP/1.1 200");
                held.push(stream);
            }
            Err(_) => {
                refused = true;
                break;
            }
        }
    }
    assert!(refused, "{} connections were all served", held.len());
    assert!(!held.is_empty() && held.len() <= CAP, "{} held", held.len());

    // Once one of them goes, a new connection is served (as soon as the server has seen it
    // go: wait for that state, not for a time).
    drop(held.pop());
    kiln_testkit::wait_until("a place is free", Duration::from_secs(30), || async {
        let mut stream = TcpStream::connect(app.addr())
            .await
            .map_err(|e| e.to_string())?;
        match healthz(&mut stream).await {
            Ok(head) if &head == b"HTTP/1.1 200" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    // The others are still served on their own connections.
    for stream in &mut held {
        assert_eq!(&healthz(stream).await.unwrap(), b"HTTP/1.1 200");
    }
}
