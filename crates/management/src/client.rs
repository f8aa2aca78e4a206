//! A small blocking client (plain HTTP/1.1 over a TCP stream; the API is on loopback).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum ManagementError {
    #[error("no management API answers at {address}: {detail}")]
    Unreachable { address: String, detail: String },
    #[error("the management API at {address} refused: {message}")]
    Refused {
        address: String,
        status: u16,
        message: String,
    },
    #[error("the management API at {address} answered something unreadable: {detail}")]
    Garbled { address: String, detail: String },
}

/// Talks to a running process's management API.
#[derive(Clone, Debug)]
pub struct ManagementClient {
    address: String,
    token: Option<String>,
    timeout: Duration,
}

impl ManagementClient {
    pub fn new(address: &str, token: Option<String>) -> Self {
        Self {
            address: address.to_owned(),
            token,
            timeout: Duration::from_secs(300),
        }
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    /// Sends one request; returns the JSON answer of a 2xx response.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ManagementError> {
        let unreachable = |detail: String| ManagementError::Unreachable {
            address: self.address.clone(),
            detail,
        };
        let garbled = |detail: &str| ManagementError::Garbled {
            address: self.address.clone(),
            detail: detail.to_owned(),
        };
        let mut stream =
            TcpStream::connect(&self.address).map_err(|e| unreachable(e.to_string()))?;
        stream
            .set_read_timeout(Some(self.timeout))
            .map_err(|e| unreachable(e.to_string()))?;
        let body = body.map(Value::to_string).unwrap_or_default();
        let auth = self
            .token
            .as_ref()
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.address,
            body.len()
        );
        stream
            .write_all(request.as_bytes())
            .map_err(|e| unreachable(e.to_string()))?;
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .map_err(|e| unreachable(e.to_string()))?;
        let (head, payload) = response
            .split_once("\r\n\r\n")
            .ok_or_else(|| garbled("no header end"))?;
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| garbled("no status"))?;
        let value: Value =
            serde_json::from_str(payload).map_err(|_| garbled("body is not JSON"))?;
        if (200..300).contains(&status) {
            Ok(value)
        } else {
            let message = value
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("unknown error")
                .to_owned();
            Err(ManagementError::Refused {
                address: self.address.clone(),
                status,
                message,
            })
        }
    }

    /// Whether a process answers (used to decide between live and offline operation).
    pub fn is_live(&self) -> bool {
        self.call("GET", "/v1/health", None).is_ok()
    }
}
