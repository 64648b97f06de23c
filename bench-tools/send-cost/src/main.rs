//! What one small TCP send on loopback costs the sender, with no server around it:
//! N connections, and every `interval` ms one 150-byte send to each (an "event"),
//! made as one `write` per socket, one `writev` of three parts per socket (as Herald
//! writes a chunk), or one `io_uring_enter` submitting all N sends. A receiver thread
//! reads every socket with epoll, as a load tool would. Prints the sender's and the
//! receiver's CPU time per send (per-thread CPU clocks).
//!
//! An optional fifth argument sends each round to only that many sockets, taken in
//! turn, so each socket is idle between its sends (the spread scenario's shape:
//! `send-cost writev 9000 10000 1 9` is 9 sends every millisecond over 9,000
//! sockets, each written once a second; the probe holds both ends of each
//! connection, so 20,000 open files allow fewer than 10,000).
//!
//! ```sh
//! cd bench-tools/send-cost && cargo build --release
//! ulimit -n 20000
//! for m in write writev uring; do target/release/send-cost $m 1000 800 10; done
//! ```
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

fn thread_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 && args.len() != 6 {
        eprintln!("usage: send-cost write|writev|uring CONNECTIONS ROUNDS INTERVAL_MS [PER_ROUND]");
        std::process::exit(2);
    }
    let mode = args[1].clone();
    if !["write", "writev", "uring"].contains(&mode.as_str()) {
        eprintln!("send-cost: the mode is write, writev or uring");
        std::process::exit(2);
    }
    let n: usize = args[2].parse().expect("CONNECTIONS");
    let rounds: usize = args[3].parse().expect("ROUNDS");
    let interval_ms: u64 = args[4].parse().expect("INTERVAL_MS");
    let per: usize = args.get(5).map_or(n, |a| a.parse().expect("PER_ROUND"));
    assert!(per >= 1 && per <= n, "PER_ROUND is 1..=CONNECTIONS");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut clients = Vec::new();
    let mut servers = Vec::new();
    for _ in 0..n {
        let c = TcpStream::connect(addr).unwrap();
        let (s, _) = listener.accept().unwrap();
        s.set_nodelay(true).unwrap();
        c.set_nonblocking(true).unwrap();
        clients.push(c);
        servers.push(s);
    }
    let total = per * rounds;
    // Receiver: epoll over every client socket (mio), counting bytes.
    let recv = std::thread::spawn(move || {
        let mut poll = mio::Poll::new().unwrap();
        let mut socks: Vec<mio::net::TcpStream> = clients
            .into_iter()
            .map(mio::net::TcpStream::from_std)
            .collect();
        for (i, s) in socks.iter_mut().enumerate() {
            poll.registry()
                .register(s, mio::Token(i), mio::Interest::READABLE)
                .unwrap();
        }
        let mut events = mio::Events::with_capacity(1024);
        let mut buf = [0u8; 16384];
        let mut got = 0usize;
        let want = total * 150;
        let t0 = thread_cpu();
        while got < want {
            poll.poll(&mut events, Some(Duration::from_secs(5)))
                .unwrap();
            for ev in events.iter() {
                let s = &mut socks[ev.token().0];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) => break,
                        Ok(k) => got += k,
                        Err(_) => break,
                    }
                }
            }
        }
        thread_cpu() - t0
    });
    let payload = [b'x'; 150];
    let fds: Vec<i32> = servers.iter().map(|s| s.as_raw_fd()).collect();
    let mut ring = io_uring::IoUring::new(4096).unwrap();
    let mut sel: Vec<i32> = Vec::with_capacity(per);
    let t0 = thread_cpu();
    let start = Instant::now();
    for r in 0..rounds {
        let first = (r * per) % n;
        sel.clear();
        sel.extend((0..per).map(|k| fds[(first + k) % n]));
        let fds = &sel[..];
        match mode.as_str() {
            "write" => {
                for &fd in fds {
                    let k = unsafe { libc::write(fd, payload.as_ptr().cast(), payload.len()) };
                    assert_eq!(k, 150);
                }
            }
            "writev" => {
                // As Herald writes a chunk: size line, frame, CRLF.
                let iov = [
                    libc::iovec {
                        iov_base: payload.as_ptr() as *mut _,
                        iov_len: 4,
                    },
                    libc::iovec {
                        iov_base: payload[4..].as_ptr() as *mut _,
                        iov_len: 144,
                    },
                    libc::iovec {
                        iov_base: payload[148..].as_ptr() as *mut _,
                        iov_len: 2,
                    },
                ];
                for &fd in fds {
                    let k = unsafe { libc::writev(fd, iov.as_ptr(), 3) };
                    assert_eq!(k, 150);
                }
            }
            "uring" => {
                let mut i = 0;
                while i < fds.len() {
                    let end = (i + 4096).min(fds.len());
                    {
                        let mut sq = ring.submission();
                        for &fd in &fds[i..end] {
                            let e = io_uring::opcode::Send::new(
                                io_uring::types::Fd(fd),
                                payload.as_ptr(),
                                150,
                            )
                            .build();
                            unsafe { sq.push(&e).unwrap() };
                        }
                    }
                    ring.submit_and_wait(end - i).unwrap();
                    for cqe in ring.completion() {
                        assert_eq!(cqe.result(), 150);
                    }
                    i = end;
                }
            }
            _ => unreachable!("checked above"),
        }
        if interval_ms > 0 {
            let next = start + Duration::from_millis(interval_ms * (r as u64 + 1));
            if let Some(d) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
        }
    }
    let send_cpu = thread_cpu() - t0;
    let recv_cpu = recv.join().unwrap();
    println!(
        "{mode} n={n} rounds={rounds}: sender {:.2} µs/send, receiver {:.2} µs/send",
        send_cpu * 1e6 / total as f64,
        recv_cpu * 1e6 / total as f64
    );
}
