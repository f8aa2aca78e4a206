//! One client connection: frames in, answers out (pipelined: answers carry the request id and
//! may come back in any order). Requests that can wait (locks) run on their own thread so they
//! hold up nothing else. A malformed frame or a failed `Hello` closes the connection.

use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ortelius_timelock::wire::{read_frame, ErrorCode, Request, Response};

use crate::authority::{Authority, Refusal};

/// Who may do what on a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Client,
    Admin,
}

/// What every connection shares.
pub struct Shared {
    pub authority: Arc<Authority>,
    pub token: Option<String>,
    pub admin_token: Option<String>,
    pub cluster: String,
    /// The current leader's client address, if known (for "not leader" answers).
    pub leader_hint: Arc<dyn Fn() -> Option<String> + Send + Sync>,
}

/// The longest a lock request may wait.
const MAX_WAIT: Duration = Duration::from_secs(600);

fn answer(shared: &Shared, result: Result<Response, Refusal>) -> Response {
    result.unwrap_or_else(|r| Response::Error {
        leader: if r.code == ErrorCode::NotLeader {
            (shared.leader_hint)()
        } else {
            None
        },
        code: r.code,
        message: r.message,
    })
}

fn handle(shared: &Shared, role: Role, request: Request) -> Response {
    let a = &shared.authority;
    let result = match request {
        Request::Hello { .. } => Err(Refusal::new(ErrorCode::Invalid, "already greeted")),
        Request::FreshTimestamps { count } => a
            .fresh(count)
            .map(|(first, last)| Response::Range { first, last }),
        Request::StartTransaction => a
            .start_transaction()
            .map(|(token, start)| Response::Started { token, start }),
        Request::Lock {
            descriptors,
            timeout_ms,
        } => a
            .lock(descriptors, Duration::from_millis(timeout_ms).min(MAX_WAIT))
            .map(Response::Token),
        Request::Refresh { tokens } => a.refresh(&tokens).map(Response::Tokens),
        Request::Unlock { tokens } => a.unlock(&tokens).map(Response::Tokens),
        Request::WaitForLocks {
            descriptors,
            timeout_ms,
        } => a
            .wait_for_locks(descriptors, Duration::from_millis(timeout_ms).min(MAX_WAIT))
            .map(|()| Response::Ok),
        Request::LockImmutable { timestamp } => a.lock_immutable(timestamp).map(Response::Token),
        Request::MinLocked => a.min_locked().map(Response::MaybeTimestamp),
        Request::FastForward { timestamp } => {
            if role == Role::Admin {
                a.fast_forward(timestamp)
                    .map(|(advanced, previous, current)| Response::FastForwarded {
                        advanced,
                        previous,
                        current,
                    })
            } else {
                Err(Refusal::new(
                    ErrorCode::Unauthorized,
                    "fast-forward needs the admin token (timelock.adminToken)",
                ))
            }
        }
        Request::Leader => Ok(Response::Leader {
            cluster: shared.cluster.clone(),
            leader: (shared.leader_hint)(),
            epoch: a.epoch().unwrap_or(0),
        }),
    };
    answer(shared, result)
}

fn send(writer: &Mutex<TcpStream>, id: u64, response: &Response) -> bool {
    use std::io::Write;
    let frame = response.encode(id);
    writer
        .lock()
        .map(|mut w| w.write_all(&frame).is_ok())
        .unwrap_or(false)
}

/// Serves one connection until it closes or misbehaves.
pub fn serve(stream: TcpStream, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let writer = Arc::new(Mutex::new(write_half));
    let mut reader = std::io::BufReader::new(stream);
    let mut role = None;
    loop {
        let body = match read_frame(&mut reader) {
            Ok(Some(body)) => body,
            _ => return,
        };
        let Ok((id, request)) = Request::decode(&body) else {
            return; // malformed: close; the server goes on serving others
        };
        let Some(role) = role else {
            let Request::Hello { token } = request else {
                let _ = send(
                    &writer,
                    id,
                    &answer(
                        &shared,
                        Err(Refusal::new(ErrorCode::Unauthorized, "send Hello first")),
                    ),
                );
                return;
            };
            let admin = shared.admin_token.as_deref().is_some_and(|t| t == token);
            let client = shared.token.as_deref().is_none_or(|t| t == token);
            if !admin && !client {
                let _ = send(
                    &writer,
                    id,
                    &answer(
                        &shared,
                        Err(Refusal::new(
                            ErrorCode::Unauthorized,
                            "wrong timelock token; set timelock.token in the config",
                        )),
                    ),
                );
                return;
            }
            role = Some(if admin { Role::Admin } else { Role::Client });
            if !send(&writer, id, &Response::Ok) {
                return;
            }
            continue;
        };
        if matches!(request, Request::Lock { .. } | Request::WaitForLocks { .. }) {
            let (shared, writer) = (shared.clone(), writer.clone());
            let spawned = std::thread::Builder::new()
                .name("timelock-wait".to_owned())
                .spawn(move || {
                    let response = handle(&shared, role, request);
                    send(&writer, id, &response);
                });
            if spawned.is_err() {
                return;
            }
        } else if !send(&writer, id, &handle(&shared, role, request)) {
            return;
        }
    }
}
