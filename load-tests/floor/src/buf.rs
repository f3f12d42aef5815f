//! A connection's read buffer: one allocation per connection, reused for every request.

use std::io;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Bytes read but not yet consumed live in `data[start..end]`.
pub(crate) struct Buf {
    data: Box<[u8]>,
    start: usize,
    end: usize,
}

impl Buf {
    pub(crate) fn new(size: usize) -> Self {
        Buf {
            data: vec![0; size].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    pub(crate) fn filled(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// True when a head still incomplete fills the whole buffer.
    pub(crate) fn is_full(&self) -> bool {
        self.start == 0 && self.end == self.data.len()
    }

    pub(crate) fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    pub(crate) fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// One read from `s` after what is buffered. 0 means end of stream (or a full buffer,
    /// which callers check with `is_full` first).
    pub(crate) async fn read_from(&mut self, s: &mut TcpStream) -> io::Result<usize> {
        if self.end == self.data.len() && self.start > 0 {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let n = s.read(&mut self.data[self.end..]).await?;
        self.end += n;
        Ok(n)
    }
}
