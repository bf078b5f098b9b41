//! Tolerance for the `:authority` that etcd 3.4 clients send.
//!
//! etcdctl 3.4 (clientv3) dials single endpoints as `passthrough:///http://host:port`,
//! so its maintenance calls (endpoint status, defrag, hashkv) carry the HTTP/2
//! pseudo-header `:authority: http://host:port`. etcd accepts that; the HTTP/2
//! layer under tonic resets such streams as malformed. This module sits between
//! the connection and the HTTP/2 server and rewrites an `:authority` that is not
//! a valid authority into one of the same length that is
//! (`http://127.0.0.1:2379` becomes `xxxxxx@127.0.0.1:2379`), leaving every other
//! byte alone.
//!
//! Keeping the length keeps the client's and the server's HPACK dynamic tables
//! the same size, so later header blocks that refer to table entries decode as
//! the client meant (an entry that held the bad value holds the fixed one).
//! Only header blocks that contain a bad `:authority` are re-framed; all other
//! frames, and connections that are not HTTP/2, pass through untouched.

use std::io;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

thread_local! {
    /// Where reads from the connection land before they join `pending`: one
    /// per thread (a read completes within one call), so a read neither
    /// clears a buffer of its own nor costs each connection one.
    static SCRATCH: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0u8; 16 * 1024].into_boxed_slice());
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADERS: u8 = 0x1;
const FRAME_CONTINUATION: u8 = 0x9;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// The HTTP/2 default SETTINGS_MAX_FRAME_SIZE, which the server keeps.
const MAX_FRAME: usize = 16_384;
/// The most of one header block held back for inspection. etcd's clients send
/// blocks of a few hundred bytes; a longer block passes through unchanged, and
/// the HTTP/2 server applies its own header-list limit to it, so a client
/// cannot make this layer hold more than this much per connection.
const MAX_HELD_BLOCK: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Waiting for enough bytes to tell HTTP/2 from HTTP/1.
    Detect,
    /// HTTP/2 after the preface: frames are inspected.
    Frames,
    /// Anything else: bytes pass through.
    Passthrough,
}

/// A connection whose incoming HTTP/2 header blocks get a valid `:authority`.
pub struct FixAuthority<S> {
    inner: S,
    mode: Mode,
    /// Bytes read from `inner`; those from `pending_pos` on are not yet processed.
    pending: Vec<u8>,
    pending_pos: usize,
    /// Processed bytes not yet handed to the reader.
    ready: Vec<u8>,
    ready_pos: usize,
    /// Payload bytes of a non-header frame still to pass through unexamined.
    pass: usize,
    /// The raw frames of a header block waiting for END_HEADERS.
    block_frames: Vec<u8>,
    /// That block's first frame: (flags, stream id, priority bytes).
    block_head: Option<(u8, u32, Vec<u8>)>,
    /// That block's fragments, joined.
    block: Vec<u8>,
    eof: bool,
}

impl<S> FixAuthority<S> {
    pub fn new(inner: S) -> Self {
        FixAuthority {
            inner,
            mode: Mode::Detect,
            pending: Vec::new(),
            pending_pos: 0,
            ready: Vec::new(),
            ready_pos: 0,
            pass: 0,
            block_frames: Vec::new(),
            block_head: None,
            block: Vec::new(),
            eof: false,
        }
    }

    /// Moves what can be decided from `pending` to `ready`.
    fn process(&mut self) {
        self.decide();
        // What is left (part of a frame) moves to the front once, not once
        // per frame taken.
        if self.pending_pos == self.pending.len() {
            self.pending.clear();
        } else {
            self.pending.drain(..self.pending_pos);
        }
        self.pending_pos = 0;
    }

    /// The bytes not yet processed.
    fn unprocessed(&self) -> &[u8] {
        &self.pending[self.pending_pos..]
    }

    /// Hands the next `n` unprocessed bytes to the reader as they are.
    fn take_ready(&mut self, n: usize) {
        let at = self.pending_pos;
        self.ready.extend_from_slice(&self.pending[at..at + n]);
        self.pending_pos += n;
    }

    fn decide(&mut self) {
        loop {
            match self.mode {
                Mode::Passthrough => {
                    self.take_ready(self.unprocessed().len());
                    return;
                }
                Mode::Detect => {
                    let n = self.unprocessed().len().min(PREFACE.len());
                    if self.unprocessed()[..n] != PREFACE[..n] {
                        self.mode = Mode::Passthrough;
                    } else if n == PREFACE.len() {
                        self.take_ready(n);
                        self.mode = Mode::Frames;
                    } else {
                        return;
                    }
                }
                Mode::Frames => {
                    if self.pass > 0 {
                        let n = self.pass.min(self.unprocessed().len());
                        self.take_ready(n);
                        self.pass -= n;
                        if self.pass > 0 {
                            return;
                        }
                    }
                    let head = self.unprocessed();
                    if head.len() < 9 {
                        return;
                    }
                    let len = (usize::from(head[0]) << 16)
                        | (usize::from(head[1]) << 8)
                        | usize::from(head[2]);
                    let kind = head[3];
                    let flags = head[4];
                    let stream =
                        u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
                    let in_block = self.block_head.is_some();
                    let header_frame = (kind == FRAME_HEADERS && !in_block)
                        || (kind == FRAME_CONTINUATION && in_block);
                    if !header_frame || len > MAX_FRAME {
                        // Not ours to change (or a protocol error the HTTP/2
                        // server reports itself): give back what was held.
                        self.flush_block_unchanged();
                        self.take_ready(9);
                        self.pass = len;
                        continue;
                    }
                    if self.unprocessed().len() < 9 + len {
                        return;
                    }
                    let at = self.pending_pos;
                    self.pending_pos += 9 + len;
                    let frame = &self.pending[at..at + 9 + len];
                    self.block_frames.extend_from_slice(frame);
                    let payload = &frame[9..];
                    if kind == FRAME_HEADERS {
                        let Some((prio, fragment)) = split_headers_payload(flags, payload) else {
                            self.flush_block_unchanged();
                            continue;
                        };
                        self.block_head = Some((flags, stream, prio.to_vec()));
                        self.block.extend_from_slice(fragment);
                    } else {
                        self.block.extend_from_slice(payload);
                    }
                    if flags & FLAG_END_HEADERS != 0 {
                        self.finish_block();
                    } else if self.block_frames.len() > MAX_HELD_BLOCK {
                        // Its CONTINUATION frames now pass through as they come.
                        self.flush_block_unchanged();
                    }
                }
            }
        }
    }

    fn flush_block_unchanged(&mut self) {
        self.ready.append(&mut self.block_frames);
        self.block.clear();
        self.block_head = None;
    }

    fn finish_block(&mut self) {
        let Some((flags, stream, prio)) = self.block_head.take() else {
            self.flush_block_unchanged();
            return;
        };
        let Some(fixed) = rewrite_block(&self.block) else {
            self.flush_block_unchanged();
            return;
        };
        self.block_frames.clear();
        self.block.clear();
        let first_room = MAX_FRAME - prio.len();
        let (first, mut rest) = fixed.split_at(first_room.min(fixed.len()));
        let mut first_flags = flags & !(FLAG_PADDED | FLAG_END_HEADERS);
        if rest.is_empty() {
            first_flags |= FLAG_END_HEADERS;
        }
        let mut payload = prio;
        payload.extend_from_slice(first);
        push_frame(
            &mut self.ready,
            FRAME_HEADERS,
            first_flags,
            stream,
            &payload,
        );
        while !rest.is_empty() {
            let (chunk, more) = rest.split_at(MAX_FRAME.min(rest.len()));
            let f = if more.is_empty() { FLAG_END_HEADERS } else { 0 };
            push_frame(&mut self.ready, FRAME_CONTINUATION, f, stream, chunk);
            rest = more;
        }
    }
}

fn push_frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = payload.len();
    out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// Splits a HEADERS payload into its priority bytes and its header block
/// fragment, dropping padding.
fn split_headers_payload(flags: u8, payload: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut p = payload;
    if flags & FLAG_PADDED != 0 {
        let (&pad, rest) = p.split_first()?;
        p = rest.get(..rest.len().checked_sub(usize::from(pad))?)?;
    }
    if flags & FLAG_PRIORITY != 0 {
        if p.len() < 5 {
            return None;
        }
        Some(p.split_at(5))
    } else {
        Some((&[], p))
    }
}

/// Decodes an HPACK integer with an `n`-bit prefix at `block[i]`; returns it
/// and the position after it.
fn hpack_int(block: &[u8], i: usize, n: u32) -> Option<(u64, usize)> {
    let mask = (1u64 << n) - 1;
    let mut v = u64::from(*block.get(i)?) & mask;
    let mut i = i + 1;
    if v < mask {
        return Some((v, i));
    }
    let mut shift = 0;
    loop {
        let b = *block.get(i)?;
        i += 1;
        v += u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some((v, i));
        }
        shift += 7;
        if shift > 35 {
            return None;
        }
    }
}

/// Reads an HPACK string literal at `block[i]`: (Huffman flag, raw bytes, end).
fn hpack_str(block: &[u8], i: usize) -> Option<(bool, &[u8], usize)> {
    let huffman = block.get(i)? & 0x80 != 0;
    let (len, start) = hpack_int(block, i, 7)?;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    Some((huffman, block.get(start..end)?, end))
}

/// The header block with every bad `:authority` value replaced, or `None` when
/// there is nothing to change (or the block cannot be parsed, which the HTTP/2
/// server then reports).
fn rewrite_block(block: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut copied = 0;
    let mut i = 0;
    while i < block.len() {
        let b = block[i];
        if b & 0x80 != 0 {
            // Indexed field.
            i = hpack_int(block, i, 7)?.1;
            continue;
        }
        if b & 0xe0 == 0x20 {
            // Dynamic table size update.
            i = hpack_int(block, i, 5)?.1;
            continue;
        }
        let prefix = if b & 0x40 != 0 { 6 } else { 4 };
        let (name_index, next) = hpack_int(block, i, prefix)?;
        i = next;
        if name_index == 0 {
            i = hpack_str(block, i)?.2;
        }
        let value_at = i;
        let (huffman, raw, end) = hpack_str(block, i)?;
        i = end;
        // Static table entry 1 is `:authority`.
        if name_index != 1 {
            continue;
        }
        let value = if huffman {
            huffman_decode(raw)?
        } else {
            raw.to_vec()
        };
        if let Some(fixed) = fix_authority(&value) {
            out.extend_from_slice(&block[copied..value_at]);
            push_raw_str(&mut out, &fixed);
            copied = end;
        }
    }
    if copied == 0 {
        return None;
    }
    out.extend_from_slice(&block[copied..]);
    Some(out)
}

/// Appends a string literal without Huffman coding.
fn push_raw_str(out: &mut Vec<u8>, s: &[u8]) {
    let mut len = s.len() as u64;
    if len < 0x7f {
        out.push(len as u8);
    } else {
        out.push(0x7f);
        len -= 0x7f;
        while len >= 0x80 {
            out.push((len as u8 & 0x7f) | 0x80);
            len >>= 7;
        }
        out.push(len as u8);
    }
    out.extend_from_slice(s);
}

fn valid_authority(v: &[u8]) -> bool {
    http::uri::Authority::try_from(v).is_ok()
}

/// A valid authority of the same length for an invalid one, or `None` when
/// `v` is fine (or cannot be fixed).
fn fix_authority(v: &[u8]) -> Option<Vec<u8>> {
    if v.is_empty() || valid_authority(v) {
        return None;
    }
    // `scheme://host:port[/path]`: keep host:port, turn the rest into userinfo.
    if let Some(at) = v.windows(3).position(|w| w == b"://") {
        let after = &v[at + 3..];
        let host_len = after.iter().position(|&c| c == b'/').unwrap_or(after.len());
        let host = &after[..host_len];
        if !host.is_empty() && valid_authority(host) {
            let mut fixed = vec![b'x'; v.len() - host.len() - 1];
            fixed.push(b'@');
            fixed.extend_from_slice(host);
            if valid_authority(&fixed) {
                return Some(fixed);
            }
        }
    }
    Some(vec![b'x'; v.len()])
}

/// Bit lengths of the HPACK Huffman code (RFC 7541, Appendix B) for symbols
/// 0..=255 and EOS (256). The code is canonical: codes are assigned in order
/// of (length, symbol).
#[rustfmt::skip]
const HUFFMAN_LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28,
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28,
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6,
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10,
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6,
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5,
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28,
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23,
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24,
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23,
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23,
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25,
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27,
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23,
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26,
    30,
];

/// Canonical decoding tables: for each length, the first code, and the index
/// into `symbols` of its first symbol; `symbols` sorted by (length, symbol).
struct Canonical {
    first_code: [u32; 31],
    count: [u32; 31],
    first_index: [usize; 31],
    symbols: Vec<u16>,
}

fn canonical() -> &'static Canonical {
    static TABLE: OnceLock<Canonical> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut symbols: Vec<u16> = (0..257u16).collect();
        symbols.sort_by_key(|&s| (HUFFMAN_LENGTHS[usize::from(s)], s));
        let mut count = [0u32; 31];
        for &l in &HUFFMAN_LENGTHS {
            count[usize::from(l)] += 1;
        }
        let mut first_code = [0u32; 31];
        let mut first_index = [0usize; 31];
        let (mut code, mut index) = (0u32, 0usize);
        for len in 1..31 {
            code <<= 1;
            first_code[len] = code;
            first_index[len] = index;
            code += count[len];
            index += count[len] as usize;
        }
        Canonical {
            first_code,
            count,
            first_index,
            symbols,
        }
    })
}

/// Decodes an HPACK Huffman string; `None` if it is not valid.
fn huffman_decode(data: &[u8]) -> Option<Vec<u8>> {
    let t = canonical();
    let mut out = Vec::with_capacity(data.len() * 8 / 5);
    let (mut code, mut len) = (0u32, 0usize);
    for &byte in data {
        for bit in (0..8).rev() {
            code = (code << 1) | u32::from((byte >> bit) & 1);
            len += 1;
            if len > 30 {
                return None;
            }
            let offset = code.wrapping_sub(t.first_code[len]);
            if code >= t.first_code[len] && offset < t.count[len] {
                let sym = t.symbols[t.first_index[len] + offset as usize];
                if sym == 256 {
                    return None;
                }
                out.push(sym as u8);
                code = 0;
                len = 0;
            }
        }
    }
    // What is left must be fewer than 8 padding bits, all ones.
    if len > 7 || code != (1u32 << len) - 1 {
        return None;
    }
    Some(out)
}

impl<S: AsyncRead + Unpin> FixAuthority<S> {
    /// Reads from the connection through `scratch` into `pending`; true at
    /// its end.
    fn read_inner(&mut self, scratch: &mut [u8], cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        let mut rb = ReadBuf::new(scratch);
        let r = Pin::new(&mut self.inner).poll_read(cx, &mut rb);
        self.pending.extend_from_slice(rb.filled());
        r.map_ok(|()| rb.filled().is_empty())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FixAuthority<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.ready_pos < this.ready.len() {
                let n = (this.ready.len() - this.ready_pos).min(buf.remaining());
                buf.put_slice(&this.ready[this.ready_pos..this.ready_pos + n]);
                this.ready_pos += n;
                if this.ready_pos == this.ready.len() {
                    this.ready.clear();
                    this.ready_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                // Whatever could not be decided goes through as it is.
                this.flush_block_unchanged();
                this.take_ready(this.unprocessed().len());
                this.pending.clear();
                this.pending_pos = 0;
                if this.ready.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            let read = SCRATCH.with(|cell| match cell.try_borrow_mut() {
                Ok(mut scratch) => this.read_inner(&mut scratch, cx),
                // Not reached (a read does not nest), but never a panic.
                Err(_) => this.read_inner(&mut [0u8; 16 * 1024], cx),
            });
            match read {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(true)) => this.eof = true,
                Poll::Ready(Ok(false)) => this.process(),
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FixAuthority<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    #[test]
    fn huffman_code_is_complete() {
        // Kraft's sum of a complete prefix code is exactly 1.
        let sum: u64 = HUFFMAN_LENGTHS.iter().map(|&l| 1u64 << (30 - l)).sum();
        assert_eq!(sum, 1 << 30);
    }

    #[test]
    fn huffman_decodes_rfc7541_examples() {
        for (h, text) in [
            ("f1e3c2e5f23a6ba0ab90f4ff", "www.example.com"),
            ("a8eb10649cbf", "no-cache"),
            ("25a849e95ba97d7f", "custom-key"),
            ("25a849e95bb8e8b4bf", "custom-value"),
            ("6402", "302"),
            ("aec3771a4b", "private"),
            (
                "d07abe941054d444a8200595040b8166e082a62d1bff",
                "Mon, 21 Oct 2013 20:13:21 GMT",
            ),
            (
                "9d29ad171863c78f0b97c8e9ae82ae43d3",
                "https://www.example.com",
            ),
            ("9bd9ab", "gzip"),
        ] {
            assert_eq!(huffman_decode(&hex(h)).as_deref(), Some(text.as_bytes()));
        }
        // Padding longer than 7 bits, or not all ones, is an error.
        assert_eq!(huffman_decode(&hex("6402ff")), None);
        assert_eq!(huffman_decode(&hex("1f")).as_deref(), Some(&b"a"[..]));
        assert_eq!(huffman_decode(&hex("18")), None);
    }

    #[test]
    fn fixes_keep_the_length() {
        let f = fix_authority(b"http://127.0.0.1:2379").expect("fixed");
        assert_eq!(f, b"xxxxxx@127.0.0.1:2379");
        assert_eq!(fix_authority(b"127.0.0.1:2379"), None);
        assert_eq!(fix_authority(b"localhost"), None);
        let f = fix_authority(b"https://h:1/some/path").expect("fixed");
        assert_eq!(f.len(), "https://h:1/some/path".len());
        assert!(valid_authority(&f));
        let f = fix_authority(b"a b").expect("fixed");
        assert_eq!(f, b"xxx");
    }

    #[test]
    fn rewrites_only_the_authority_literal() {
        // :method GET (indexed 2), :authority literal with incremental
        // indexing, raw "http://h:1", then :path literal "/x" without indexing.
        let mut block = vec![0x82, 0x41, 10];
        block.extend_from_slice(b"http://h:1");
        block.extend_from_slice(&[0x04, 2, b'/', b'x']);
        let out = rewrite_block(&block).expect("rewritten");
        let mut want = vec![0x82, 0x41, 10];
        want.extend_from_slice(b"xxxxxx@h:1");
        want.extend_from_slice(&[0x04, 2, b'/', b'x']);
        assert_eq!(out, want);
        // A valid authority leaves the block alone.
        let mut ok = vec![0x82, 0x41, 3];
        ok.extend_from_slice(b"h:1");
        assert_eq!(rewrite_block(&ok), None);
    }

    #[tokio::test]
    async fn rewrites_frames_on_the_wire() {
        use tokio::io::AsyncReadExt;
        let mut block = vec![0x82, 0x41, 10];
        block.extend_from_slice(b"http://h:1");
        let mut input = PREFACE.to_vec();
        // A padded HEADERS frame without END_HEADERS, then a CONTINUATION.
        let mut payload = vec![2u8];
        payload.extend_from_slice(&block[..5]);
        payload.extend_from_slice(&[0, 0]);
        push_frame(&mut input, FRAME_HEADERS, FLAG_PADDED, 1, &payload);
        push_frame(
            &mut input,
            FRAME_CONTINUATION,
            FLAG_END_HEADERS,
            1,
            &block[5..],
        );
        push_frame(&mut input, 0x0, 0x1, 1, b"data");
        let mut r = FixAuthority::new(&input[..]);
        let mut out = Vec::new();
        r.read_to_end(&mut out).await.expect("read");
        let mut want = PREFACE.to_vec();
        let mut fixed = vec![0x82, 0x41, 10];
        fixed.extend_from_slice(b"xxxxxx@h:1");
        push_frame(&mut want, FRAME_HEADERS, FLAG_END_HEADERS, 1, &fixed);
        push_frame(&mut want, 0x0, 0x1, 1, b"data");
        assert_eq!(out, want);

        // A header block that never ends (a CONTINUATION flood) is not held:
        // it passes through unchanged, with at most MAX_HELD_BLOCK held at once.
        let mut flood = PREFACE.to_vec();
        push_frame(&mut flood, FRAME_HEADERS, 0, 1, &block);
        for _ in 0..1000 {
            push_frame(&mut flood, FRAME_CONTINUATION, 0, 1, &[0x82; MAX_FRAME]);
        }
        let mut r = FixAuthority::new(&flood[..]);
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = r.read(&mut buf).await.expect("read");
            assert!(r.block_frames.len() <= MAX_HELD_BLOCK + MAX_FRAME + 9);
            assert!(r.block.len() <= MAX_HELD_BLOCK);
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        assert_eq!(out, flood);

        // HTTP/1.1 passes through.
        let plain = b"GET /health HTTP/1.1\r\nHost: h\r\n\r\n".to_vec();
        let mut r = FixAuthority::new(&plain[..]);
        let mut out = Vec::new();
        r.read_to_end(&mut out).await.expect("read");
        assert_eq!(out, plain);
    }
}
