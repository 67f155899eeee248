//! Request bodies as every listener hands them to its router: charged to the memory budget as
//! their bytes arrive ([`super::budget`]).
//!
//! - **gRPC** ([`Framing::Grpc`]): a message's 5-byte prefix announces its length. One over
//!   `--grpc-max-message-size` is refused from the prefix, for every service alike (health and
//!   reflection included). Otherwise the announced length is charged as the prefix passes, before
//!   tonic reads it: tonic reserves exactly that much at once and fills it as the bytes come,
//!   so the charge is what the message will hold (one allocation, nothing grown and freed).
//!   Chunks pass as they came, with no copy. A stream's charge is its largest message (tonic
//!   keeps a buffer that large while the stream lives).
//! - **HTTP** ([`Framing::Http`]): each chunk is charged as it arrives and held until the body
//!   is dropped (the handler collects it whole).
//!
//! A charge the budget cannot take fails the body ([`BodyError::Spent`]) and makes room by
//! closing the idlest connection whose requests are all still arriving; the router answers
//! RESOURCE_EXHAUSTED or 503.
//! The request counts as receiving (its connection may be closed to make room) until its first
//! message is whole or its body ended, and as worked on from then until it is answered.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};

use super::budget::Charge;
use super::{Activity, Registry};

/// The gRPC message prefix: a compressed flag and a 4-byte big-endian length.
const GRPC_PREFIX: usize = 5;

/// How a listener's request bodies are framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Length-prefixed gRPC messages, each at most this many bytes.
    Grpc { max_message: usize },
    /// An HTTP body, taken as it comes.
    Http,
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The memory budget has no room for what arrived: the idlest connection whose requests
    /// are still arriving was asked to close; worth retrying.
    #[error("the server's memory budget for requests is spent; retry")]
    Spent,
    /// A gRPC message's prefix announced more than the limit.
    #[error("a message of {announced} bytes is over the limit of {limit} bytes")]
    TooLarge { announced: usize, limit: usize },
    /// The transport's own error (the peer reset the stream, the connection closed).
    #[error(transparent)]
    Transport(#[from] hyper::Error),
}

/// A request body charged to the memory budget as it arrives.
pub struct Body {
    inner: hyper::body::Incoming,
    framing: Framing,
    /// The budget's registry (to make room when it is spent) and the connection charged.
    registry: Arc<Registry>,
    activity: Arc<Activity>,
    /// What this body holds now: the largest message announced so far, or every HTTP chunk
    /// received.
    charge: Option<Charge>,
    /// gRPC: where the stream stands between messages.
    grpc: Messages,
    /// The request is still receiving its first message or its body.
    receiving: bool,
    failed: bool,
}

impl Body {
    pub(super) fn new(
        inner: hyper::body::Incoming,
        framing: Framing,
        registry: Arc<Registry>,
        activity: Arc<Activity>,
    ) -> Self {
        // A request without a body (a probe's GET) has arrived whole with its head.
        let receiving = !http_body::Body::is_end_stream(&inner);
        if receiving {
            activity.receiving.fetch_add(1, Ordering::AcqRel);
        }
        Self {
            inner,
            framing,
            registry,
            activity,
            charge: None,
            grpc: Messages::default(),
            receiving,
            failed: false,
        }
    }

    /// The first message is whole or the body ended: the request is being worked on now.
    fn received(&mut self) {
        if std::mem::take(&mut self.receiving) {
            self.activity.receiving.fetch_sub(1, Ordering::AcqRel);
            self.activity.alive();
        }
    }

    /// Holds `bytes` in all, charging what is not charged yet; makes room when it cannot.
    fn hold(&mut self, bytes: u64) -> Result<(), BodyError> {
        let charged = self.charge.as_ref().map_or(0, Charge::bytes);
        if bytes <= charged {
            return Ok(());
        }
        let more = bytes - charged;
        let grown = match &mut self.charge {
            Some(charge) => charge.try_grow(more),
            None => self
                .registry
                .requests
                .try_charge(more)
                .map(|charge| self.charge = Some(charge)),
        };
        grown.ok_or_else(|| {
            self.registry.make_room_for_requests();
            crate::metrics::record_memory_refused("body");
            BodyError::Spent
        })
    }

    /// A gRPC chunk, on its way to tonic: every prefix in it is judged and its message charged
    /// before tonic sees it.
    fn grpc(&mut self, data: &[u8], max_message: usize) -> Result<(), BodyError> {
        let mut messages = std::mem::take(&mut self.grpc);
        let read = messages.read(data, max_message, |announced| {
            self.hold(super::budget::message_cost(announced))
        });
        self.grpc = messages;
        if read? > 0 {
            self.received();
        }
        Ok(())
    }
}

/// Where a gRPC request stream stands: the prefix read so far, or the bytes of the current
/// message still to come.
#[derive(Default)]
struct Messages {
    prefix: [u8; GRPC_PREFIX],
    have: usize,
    remaining: usize,
}

impl Messages {
    /// Reads `data`, calling `announce` with each message's length as its prefix completes
    /// (after refusing one over `max_message`); returns how many messages it completed.
    fn read(
        &mut self,
        data: &[u8],
        max_message: usize,
        mut announce: impl FnMut(u64) -> Result<(), BodyError>,
    ) -> Result<usize, BodyError> {
        let (mut rest, mut whole) = (data, 0);
        while !rest.is_empty() {
            if self.remaining > 0 {
                let taken = self.remaining.min(rest.len());
                self.remaining -= taken;
                rest = &rest[taken..];
                whole += usize::from(self.remaining == 0);
                continue;
            }
            let taken = (GRPC_PREFIX - self.have).min(rest.len());
            self.prefix[self.have..self.have + taken].copy_from_slice(&rest[..taken]);
            self.have += taken;
            rest = &rest[taken..];
            if self.have < GRPC_PREFIX {
                break;
            }
            self.have = 0;
            let [_, a, b, c, d] = self.prefix;
            let announced = u32::from_be_bytes([a, b, c, d]) as usize;
            if announced > max_message {
                return Err(BodyError::TooLarge {
                    announced,
                    limit: max_message,
                });
            }
            announce(announced as u64)?;
            self.remaining = announced;
            whole += usize::from(announced == 0);
        }
        Ok(whole)
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        self.received();
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if this.failed {
            return Poll::Ready(None);
        }
        let frame = match std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
            None => {
                this.received();
                return Poll::Ready(None);
            }
        };
        let Some(data) = frame.data_ref() else {
            // Trailers: the body ends with them.
            this.received();
            return Poll::Ready(Some(Ok(frame)));
        };
        let judged = match this.framing {
            Framing::Grpc { max_message } => this.grpc(data, max_message),
            Framing::Http => {
                let held = this.charge.as_ref().map_or(0, Charge::bytes);
                this.hold(held + data.len() as u64)
            }
        };
        if let Err(e) = judged {
            this.failed = true;
            return Poll::Ready(Some(Err(e)));
        }
        if this.framing == Framing::Http && this.inner.is_end_stream() {
            this.received();
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(length: usize) -> Vec<u8> {
        let mut message = vec![0];
        message.extend_from_slice(&(length as u32).to_be_bytes());
        message.resize(GRPC_PREFIX + length, 7);
        message
    }

    /// Feeds `chunks` to one [`Messages`]: (bytes announced in all, messages whole).
    fn walk(chunks: &[&[u8]], max_message: usize) -> Result<(u64, usize), BodyError> {
        let mut messages = Messages::default();
        let (mut announced, mut whole) = (0, 0);
        for chunk in chunks {
            whole += messages.read(chunk, max_message, |length| {
                announced += length;
                Ok(())
            })?;
        }
        Ok((announced, whole))
    }

    #[test]
    fn prefixes_are_found_across_chunks_and_one_over_the_limit_fails_at_once() {
        let two = [message(3), message(10)].concat();
        assert_eq!(walk(&[&two], 100).unwrap(), (13, 2));
        for cut in 0..two.len() {
            assert_eq!(
                walk(&[&two[..cut], &two[cut..]], 100).unwrap(),
                (13, 2),
                "{cut}"
            );
        }
        assert_eq!(walk(&[&two[..7]], 100).unwrap(), (3, 0));
        assert_eq!(walk(&[&message(0)], 100).unwrap(), (0, 1));
        let huge = message(101);
        assert!(matches!(
            walk(&[&huge[..GRPC_PREFIX]], 100),
            Err(BodyError::TooLarge {
                announced: 101,
                limit: 100
            })
        ));
        assert_eq!(walk(&[&message(100)], 100).unwrap(), (100, 1));
    }
}
