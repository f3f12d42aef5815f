//! A watch: one `POST /v3/watch` whose answer streams JSON objects, one per batch of events,
//! until the connection ends. The first says the watch was created; a watch that etcd cancels
//! (its start revision was compacted away) says so and ends.

use bytes::{Buf, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::api::{Kv, b64, kv, num, prefix_end};
use super::{Etcd, EtcdError};

/// A watch's batch larger than this is refused (the fleet's values are a few KB each).
const MAX_MESSAGE: usize = 16 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    Put(Kv),
    /// The key (its value is gone; `mod_revision` is the deletion's).
    Delete(Kv),
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Batch {
    pub events: Vec<Event>,
}

pub(crate) struct Watch {
    body: Incoming,
    buf: BytesMut,
}

impl Etcd {
    /// Watches every key under `prefix`, from revision `from` (the one after a range's).
    pub(crate) async fn watch_prefix(&self, prefix: &str, from: i64) -> Result<Watch, EtcdError> {
        let body = json!({ "create_request": {
            "key": b64(prefix.as_bytes()),
            "range_end": b64(&prefix_end(prefix)),
            "start_revision": from.to_string(),
        }});
        Ok(Watch {
            body: self.watch_stream(body).await?,
            buf: BytesMut::new(),
        })
    }
}

impl Watch {
    /// The next batch of events; `None` when the stream ended (etcd went away). A cancelled
    /// watch is an error: the caller reads everything again.
    pub(crate) async fn next(&mut self) -> Result<Option<Batch>, EtcdError> {
        loop {
            if let Some(v) = self.parse()? {
                let result = if v["result"].is_object() {
                    &v["result"]
                } else {
                    &v
                };
                if let Some(err) = v.get("error") {
                    return Err(refused(err.to_string()));
                }
                if result["canceled"].as_bool() == Some(true) {
                    let why = match num(&result["compact_revision"]) {
                        0 => result["cancel_reason"]
                            .as_str()
                            .unwrap_or("cancelled")
                            .to_owned(),
                        c => format!("the revision to start from was compacted (now {c})"),
                    };
                    return Err(refused(why));
                }
                let events = match result["events"].as_array() {
                    Some(list) => list.iter().map(event).collect::<Result<_, _>>()?,
                    None => Vec::new(),
                };
                return Ok(Some(Batch { events }));
            }
            match self.body.frame().await {
                None => return Ok(None),
                Some(Err(e)) => {
                    return Err(EtcdError::Unreachable {
                        endpoint: "watch".into(),
                        error: e.to_string(),
                    });
                }
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        self.buf.extend_from_slice(data);
                    }
                    if self.buf.len() > MAX_MESSAGE {
                        return Err(EtcdError::Decode {
                            call: "watch",
                            why: "a message larger than 16 MiB".into(),
                        });
                    }
                }
            }
        }
    }

    /// The first whole JSON value in the buffer, if one is there yet.
    fn parse(&mut self) -> Result<Option<Value>, EtcdError> {
        let start = self
            .buf
            .iter()
            .take_while(|b| b.is_ascii_whitespace())
            .count();
        self.buf.advance(start);
        if self.buf.is_empty() {
            return Ok(None);
        }
        let mut stream = serde_json::Deserializer::from_slice(&self.buf).into_iter::<Value>();
        match stream.next() {
            Some(Ok(v)) => {
                let used = stream.byte_offset();
                self.buf.advance(used);
                Ok(Some(v))
            }
            Some(Err(e)) if e.is_eof() => Ok(None),
            None => Ok(None),
            Some(Err(e)) => Err(EtcdError::Decode {
                call: "watch",
                why: e.to_string(),
            }),
        }
    }
}

fn refused(message: String) -> EtcdError {
    EtcdError::Refused {
        endpoint: "watch".into(),
        call: "watch",
        message,
    }
}

fn event(v: &Value) -> Result<Event, EtcdError> {
    let k = kv("watch", &v["kv"])?;
    Ok(match v["type"].as_str() {
        Some("DELETE") => Event::Delete(k),
        _ => Event::Put(k),
    })
}
