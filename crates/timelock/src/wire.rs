//! The timelock wire protocol: length-prefixed binary frames over TCP, shared by the server
//! and the client.
//!
//! ```text
//! frame   = len: u32 BE (of the rest, at most MAX_FRAME) ‖ request id: u64 BE ‖ tag: u8 ‖ payload
//! bytes   = len: u32 BE ‖ bytes          string = bytes (UTF-8)
//! token   = epoch: u64 BE ‖ id: u64 BE
//! ```
//!
//! A client sends requests with ids of its choosing and may send many before reading answers
//! (pipelining); the server answers each with the same id, in any order. The first request on
//! a connection must be `Hello`. A malformed frame closes the connection.

use std::io::{Read, Write};

/// The largest frame either side accepts.
pub const MAX_FRAME: usize = 1 << 20;

/// A lock grant as the server knows it: the leader epoch that granted it and its id there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RemoteToken {
    pub epoch: u64,
    pub id: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Authenticates the connection with the client token or the admin token.
    Hello {
        token: String,
    },
    /// `count` contiguous fresh timestamps.
    FreshTimestamps {
        count: u32,
    },
    /// A fresh timestamp locked as an immutable-timestamp guard, then a start timestamp.
    StartTransaction,
    Lock {
        descriptors: Vec<Vec<u8>>,
        timeout_ms: u64,
    },
    Refresh {
        tokens: Vec<RemoteToken>,
    },
    Unlock {
        tokens: Vec<RemoteToken>,
    },
    WaitForLocks {
        descriptors: Vec<Vec<u8>>,
        timeout_ms: u64,
    },
    LockImmutable {
        timestamp: i64,
    },
    MinLocked,
    /// Admin only: every later timestamp is above `timestamp`.
    FastForward {
        timestamp: i64,
    },
    /// Who leads, and this server's identity (the cluster id).
    Leader,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// This server does not lead; `leader` names the one that does, if known.
    NotLeader = 1,
    Unauthorized = 2,
    Invalid = 3,
    LockTimeout = 4,
    /// Try again (the server is starting, stepping down, or cannot reach its store).
    Unavailable = 5,
    Exhausted = 6,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    Ok,
    Range {
        first: i64,
        last: i64,
    },
    Started {
        token: RemoteToken,
        start: i64,
    },
    Token(RemoteToken),
    Tokens(Vec<RemoteToken>),
    MaybeTimestamp(Option<i64>),
    FastForwarded {
        advanced: bool,
        previous: i64,
        current: i64,
    },
    Leader {
        cluster: String,
        leader: Option<String>,
        epoch: u64,
    },
    Error {
        code: ErrorCode,
        message: String,
        leader: Option<String>,
    },
}

/// A frame that cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed timelock frame: {0}")]
pub struct Malformed(pub String);

fn malformed(what: &str) -> Malformed {
    Malformed(what.to_owned())
}

struct Out(Vec<u8>);

impl Out {
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn i64(&mut self, v: i64) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.u32(u32::try_from(v.len()).unwrap_or(u32::MAX));
        self.0.extend_from_slice(v);
        self
    }
    fn token(&mut self, t: &RemoteToken) -> &mut Self {
        self.u64(t.epoch).u64(t.id)
    }
    fn tokens(&mut self, ts: &[RemoteToken]) -> &mut Self {
        self.u32(u32::try_from(ts.len()).unwrap_or(u32::MAX));
        for t in ts {
            self.token(t);
        }
        self
    }
    fn list(&mut self, items: &[Vec<u8>]) -> &mut Self {
        self.u32(u32::try_from(items.len()).unwrap_or(u32::MAX));
        for i in items {
            self.bytes(i);
        }
        self
    }
    fn opt_string(&mut self, v: Option<&str>) -> &mut Self {
        match v {
            Some(s) => self.u8(1).bytes(s.as_bytes()),
            None => self.u8(0),
        }
    }
}

struct In<'a>(&'a [u8]);

impl<'a> In<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if self.0.len() < n {
            return Err(malformed("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, Malformed> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, Malformed> {
        let b: [u8; 8] = self
            .take(8)?
            .try_into()
            .map_err(|_| malformed("truncated"))?;
        Ok(u64::from_be_bytes(b))
    }
    fn i64(&mut self) -> Result<i64, Malformed> {
        let b: [u8; 8] = self
            .take(8)?
            .try_into()
            .map_err(|_| malformed("truncated"))?;
        Ok(i64::from_be_bytes(b))
    }
    fn bytes(&mut self) -> Result<Vec<u8>, Malformed> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
    fn string(&mut self) -> Result<String, Malformed> {
        String::from_utf8(self.bytes()?).map_err(|_| malformed("a string is not UTF-8"))
    }
    fn opt_string(&mut self) -> Result<Option<String>, Malformed> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.string()?)),
            _ => Err(malformed("bad option tag")),
        }
    }
    /// A count of items each at least `min` bytes long (so a bogus count cannot make us
    /// allocate more than the frame holds).
    fn count(&mut self, min: usize) -> Result<usize, Malformed> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min) > self.0.len() {
            return Err(malformed("a count larger than the frame"));
        }
        Ok(n)
    }
    fn token(&mut self) -> Result<RemoteToken, Malformed> {
        Ok(RemoteToken {
            epoch: self.u64()?,
            id: self.u64()?,
        })
    }
    fn tokens(&mut self) -> Result<Vec<RemoteToken>, Malformed> {
        let n = self.count(16)?;
        (0..n).map(|_| self.token()).collect()
    }
    fn list(&mut self) -> Result<Vec<Vec<u8>>, Malformed> {
        let n = self.count(4)?;
        (0..n).map(|_| self.bytes()).collect()
    }
    fn end(&self) -> Result<(), Malformed> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(malformed("trailing bytes"))
        }
    }
}

fn frame(id: u64, tag: u8, body: impl FnOnce(&mut Out)) -> Vec<u8> {
    let mut out = Out(vec![0; 4]);
    out.u64(id).u8(tag);
    body(&mut out);
    let len = u32::try_from(out.0.len() - 4).unwrap_or(u32::MAX);
    out.0[..4].copy_from_slice(&len.to_be_bytes());
    out.0
}

impl Request {
    /// The frame of this request with id `id`.
    pub fn encode(&self, id: u64) -> Vec<u8> {
        match self {
            Self::Hello { token } => frame(id, 1, |o| {
                o.bytes(token.as_bytes());
            }),
            Self::FreshTimestamps { count } => frame(id, 2, |o| {
                o.u32(*count);
            }),
            Self::StartTransaction => frame(id, 3, |_| {}),
            Self::Lock {
                descriptors,
                timeout_ms,
            } => frame(id, 4, |o| {
                o.u64(*timeout_ms).list(descriptors);
            }),
            Self::Refresh { tokens } => frame(id, 5, |o| {
                o.tokens(tokens);
            }),
            Self::Unlock { tokens } => frame(id, 6, |o| {
                o.tokens(tokens);
            }),
            Self::WaitForLocks {
                descriptors,
                timeout_ms,
            } => frame(id, 7, |o| {
                o.u64(*timeout_ms).list(descriptors);
            }),
            Self::LockImmutable { timestamp } => frame(id, 8, |o| {
                o.i64(*timestamp);
            }),
            Self::MinLocked => frame(id, 9, |_| {}),
            Self::FastForward { timestamp } => frame(id, 10, |o| {
                o.i64(*timestamp);
            }),
            Self::Leader => frame(id, 11, |_| {}),
        }
    }

    /// Decodes a frame body (after the length): its id and request.
    pub fn decode(body: &[u8]) -> Result<(u64, Self), Malformed> {
        let mut i = In(body);
        let id = i.u64()?;
        let request = match i.u8()? {
            1 => Self::Hello { token: i.string()? },
            2 => Self::FreshTimestamps { count: i.u32()? },
            3 => Self::StartTransaction,
            4 => {
                let timeout_ms = i.u64()?;
                Self::Lock {
                    descriptors: i.list()?,
                    timeout_ms,
                }
            }
            5 => Self::Refresh {
                tokens: i.tokens()?,
            },
            6 => Self::Unlock {
                tokens: i.tokens()?,
            },
            7 => {
                let timeout_ms = i.u64()?;
                Self::WaitForLocks {
                    descriptors: i.list()?,
                    timeout_ms,
                }
            }
            8 => Self::LockImmutable {
                timestamp: i.i64()?,
            },
            9 => Self::MinLocked,
            10 => Self::FastForward {
                timestamp: i.i64()?,
            },
            11 => Self::Leader,
            tag => return Err(Malformed(format!("unknown request tag {tag}"))),
        };
        i.end()?;
        Ok((id, request))
    }
}

impl ErrorCode {
    fn from_u8(v: u8) -> Result<Self, Malformed> {
        Ok(match v {
            1 => Self::NotLeader,
            2 => Self::Unauthorized,
            3 => Self::Invalid,
            4 => Self::LockTimeout,
            5 => Self::Unavailable,
            6 => Self::Exhausted,
            _ => return Err(malformed("unknown error code")),
        })
    }
}

impl Response {
    pub fn encode(&self, id: u64) -> Vec<u8> {
        match self {
            Self::Ok => frame(id, 0x80, |_| {}),
            Self::Range { first, last } => frame(id, 0x81, |o| {
                o.i64(*first).i64(*last);
            }),
            Self::Started { token, start } => frame(id, 0x82, |o| {
                o.token(token).i64(*start);
            }),
            Self::Token(t) => frame(id, 0x83, |o| {
                o.token(t);
            }),
            Self::Tokens(ts) => frame(id, 0x84, |o| {
                o.tokens(ts);
            }),
            Self::MaybeTimestamp(ts) => frame(id, 0x85, |o| match ts {
                Some(t) => {
                    o.u8(1).i64(*t);
                }
                None => {
                    o.u8(0);
                }
            }),
            Self::FastForwarded {
                advanced,
                previous,
                current,
            } => frame(id, 0x86, |o| {
                o.u8(u8::from(*advanced)).i64(*previous).i64(*current);
            }),
            Self::Leader {
                cluster,
                leader,
                epoch,
            } => frame(id, 0x87, |o| {
                o.bytes(cluster.as_bytes())
                    .opt_string(leader.as_deref())
                    .u64(*epoch);
            }),
            Self::Error {
                code,
                message,
                leader,
            } => frame(id, 0xFF, |o| {
                o.u8(*code as u8)
                    .bytes(message.as_bytes())
                    .opt_string(leader.as_deref());
            }),
        }
    }

    pub fn decode(body: &[u8]) -> Result<(u64, Self), Malformed> {
        let mut i = In(body);
        let id = i.u64()?;
        let response = match i.u8()? {
            0x80 => Self::Ok,
            0x81 => Self::Range {
                first: i.i64()?,
                last: i.i64()?,
            },
            0x82 => Self::Started {
                token: i.token()?,
                start: i.i64()?,
            },
            0x83 => Self::Token(i.token()?),
            0x84 => Self::Tokens(i.tokens()?),
            0x85 => Self::MaybeTimestamp(match i.u8()? {
                0 => None,
                1 => Some(i.i64()?),
                _ => return Err(malformed("bad option tag")),
            }),
            0x86 => Self::FastForwarded {
                advanced: i.u8()? != 0,
                previous: i.i64()?,
                current: i.i64()?,
            },
            0x87 => Self::Leader {
                cluster: i.string()?,
                leader: i.opt_string()?,
                epoch: i.u64()?,
            },
            0xFF => Self::Error {
                code: ErrorCode::from_u8(i.u8()?)?,
                message: i.string()?,
                leader: i.opt_string()?,
            },
            tag => return Err(Malformed(format!("unknown response tag {tag}"))),
        };
        i.end()?;
        Ok((id, response))
    }
}

/// Reads one frame body; `Ok(None)` at a clean end of stream.
pub fn read_frame(r: &mut impl Read) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if !(9..=MAX_FRAME).contains(&len) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes (allowed: 9 to {MAX_FRAME})"),
        ));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok(Some(body))
}

/// Writes one encoded frame.
pub fn write_frame(w: &mut impl Write, frame: &[u8]) -> std::io::Result<()> {
    w.write_all(frame)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn body(frame: &[u8]) -> &[u8] {
        &frame[4..]
    }

    #[test]
    fn every_message_round_trips_and_garbage_is_refused() {
        let t = RemoteToken { epoch: 7, id: 9 };
        let requests = vec![
            Request::Hello {
                token: "s3cret".into(),
            },
            Request::FreshTimestamps { count: 10 },
            Request::StartTransaction,
            Request::Lock {
                descriptors: vec![b"a".to_vec(), vec![]],
                timeout_ms: 5,
            },
            Request::Refresh { tokens: vec![t, t] },
            Request::Unlock { tokens: vec![] },
            Request::WaitForLocks {
                descriptors: vec![b"x".to_vec()],
                timeout_ms: 1,
            },
            Request::LockImmutable { timestamp: -3 },
            Request::MinLocked,
            Request::FastForward { timestamp: 1 << 40 },
            Request::Leader,
        ];
        for r in requests {
            assert_eq!(Request::decode(body(&r.encode(42))).unwrap(), (42, r));
        }
        let responses = vec![
            Response::Ok,
            Response::Range { first: 1, last: 9 },
            Response::Started { token: t, start: 5 },
            Response::Token(t),
            Response::Tokens(vec![t]),
            Response::MaybeTimestamp(None),
            Response::MaybeTimestamp(Some(3)),
            Response::FastForwarded {
                advanced: true,
                previous: 2,
                current: 4,
            },
            Response::Leader {
                cluster: "c".into(),
                leader: Some("h:1".into()),
                epoch: 2,
            },
            Response::Error {
                code: ErrorCode::NotLeader,
                message: "m".into(),
                leader: None,
            },
        ];
        for r in responses {
            assert_eq!(Response::decode(body(&r.encode(1))).unwrap(), (1, r));
        }
        assert!(Request::decode(&[0; 9]).is_err(), "tag 0");
        assert!(Request::decode(&[0; 3]).is_err(), "truncated");
        let mut huge_count = Request::Refresh { tokens: vec![] }.encode(1);
        let n = huge_count.len();
        huge_count[n - 4..].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(
            Request::decode(body(&huge_count)).is_err(),
            "a count beyond the frame"
        );
        let mut trailing = Request::MinLocked.encode(1);
        trailing.push(0);
        assert!(Request::decode(body(&trailing)).is_err());
        let mut r = std::io::Cursor::new(vec![0xFF, 0xFF, 0xFF, 0xFF]);
        assert!(read_frame(&mut r).is_err(), "a frame over the limit");
    }
}
