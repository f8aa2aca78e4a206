//! One pipelined connection: callers write frames under a lock and wait on their own channel;
//! a reader thread hands each answer to the caller with its request id.

use std::collections::HashMap;
use std::io::Write;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use ortelius_timelock::wire::{read_frame, ErrorCode, Request, Response};

type Pending = Arc<Mutex<HashMap<u64, mpsc::Sender<Response>>>>;

pub(crate) struct Connection {
    address: String,
    writer: Mutex<TcpStream>,
    pending: Pending,
    next_id: AtomicU64,
    broken: Arc<AtomicBool>,
}

impl Connection {
    /// Connects and authenticates.
    pub fn open(address: &str, token: &str, timeout: Duration) -> Result<Self, String> {
        let addrs = address
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve: {e}"))?;
        let mut last = "resolves to nothing".to_owned();
        let mut stream = None;
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, timeout) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = e.to_string(),
            }
        }
        let stream = stream.ok_or(last)?;
        let _ = stream.set_nodelay(true);
        let reader = stream.try_clone().map_err(|e| e.to_string())?;
        let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
        let broken = Arc::new(AtomicBool::new(false));
        {
            let (pending, broken) = (pending.clone(), broken.clone());
            std::thread::Builder::new()
                .name("timelock-client-reader".to_owned())
                .spawn(move || {
                    let mut reader = std::io::BufReader::new(reader);
                    while let Ok(Some(body)) = read_frame(&mut reader) {
                        let Ok((id, response)) = Response::decode(&body) else {
                            break;
                        };
                        let waiter = pending.lock().ok().and_then(|mut p| p.remove(&id));
                        if let Some(w) = waiter {
                            let _ = w.send(response);
                        }
                    }
                    broken.store(true, Ordering::SeqCst);
                    // Wake everyone still waiting: their channels close.
                    if let Ok(mut p) = pending.lock() {
                        p.clear();
                    }
                })
                .map_err(|e| e.to_string())?;
        }
        let conn = Self {
            address: address.to_owned(),
            writer: Mutex::new(stream),
            pending,
            next_id: AtomicU64::new(1),
            broken,
        };
        match conn.call(
            &Request::Hello {
                token: token.to_owned(),
            },
            Instant::now() + timeout,
        )? {
            Response::Ok => Ok(conn),
            Response::Error {
                message,
                code: ErrorCode::Unauthorized,
                ..
            } => {
                conn.close();
                Err(message)
            }
            other => {
                conn.close();
                Err(format!("unexpected answer to Hello: {other:?}"))
            }
        }
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::SeqCst)
    }

    fn close(&self) {
        self.broken.store(true, Ordering::SeqCst);
        if let Ok(w) = self.writer.lock() {
            let _ = w.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Sends one request and waits for its answer until `deadline`.
    pub fn call(&self, request: &Request, deadline: Instant) -> Result<Response, String> {
        if self.is_broken() {
            return Err("connection closed".to_owned());
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel();
        self.pending
            .lock()
            .map_err(|_| "pending map poisoned".to_owned())?
            .insert(id, tx);
        let sent = self
            .writer
            .lock()
            .map_err(|_| "writer poisoned".to_owned())
            .and_then(|mut w| w.write_all(&request.encode(id)).map_err(|e| e.to_string()));
        if let Err(e) = sent {
            self.close();
            return Err(e);
        }
        let wait = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(response) => Ok(response),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Ok(mut p) = self.pending.lock() {
                    p.remove(&id);
                }
                // A server that does not answer in time is treated as gone.
                self.close();
                Err("no answer in time".to_owned())
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => Err("connection closed".to_owned()),
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.close();
    }
}
