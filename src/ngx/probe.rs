//! One health check's I/O: connect to a server through nginx's
//! peer connection, optionally send a request and read the response head,
//! all as a future on nginx's event loop (ngx's `async` feature), never
//! blocking the worker.
//!
//! - One deadline for the whole probe: a timer on the connection's read
//!   event, which `ngx_close_connection` removes with the connection.
//! - The connection's `data` is a boxed [`Peer`] (a stable address) that
//!   holds the waker of the task awaiting it; both events' handlers only
//!   take that waker and wake it: the future then looks at the events'
//!   flags again (edge-triggered epoll: read or write until `NGX_AGAIN`,
//!   then `ngx_handle_*_event`).
//! - Cancel: dropping the future (its task cancelled) drops its [`Conn`],
//!   which closes the connection (timer, events, posted events removed) and
//!   then frees the `Peer`: no event can fire into freed memory. A probe
//!   still waiting for its turn leaves the queue (or passes its turn on).
//! - At most [`MAX_IN_FLIGHT`] probes of a process hold a connection at a
//!   time, and only while the process has connections to spare (the last
//!   sixteenth of `worker_connections` is the clients'); the others wait
//!   their turn in order (a turn given back, or the checks' next tick,
//!   starts the next), so checks never take more than that many
//!   connections, and a probe that finds none waits rather than leave its
//!   server unchecked.
//! - nginx logs a refused connect at `error` through the peer connection's
//!   log: probes use a copy of the cycle's log that shows `alert` and above
//!   only (a dead server would otherwise add a line every interval; the
//!   checker logs the verdicts). Debug logging is kept when enabled.
//!
//! Tested on nginx 1.22.1 and 1.28 by `t/check*.t` and `t/stream_check*.t`.

use core::future::{poll_fn, Future};
use core::mem;
use core::pin::Pin;
use core::ptr::{self, addr_of, addr_of_mut, NonNull};
use core::task::{Context, Poll, Waker};
use std::collections::VecDeque;

use nginx_sys::{
    ngx_add_timer, ngx_close_connection, ngx_connection_log_error_e_NGX_ERROR_INFO,
    ngx_connection_t, ngx_cycle, ngx_event_connect_peer, ngx_event_get_peer, ngx_event_t,
    ngx_handle_read_event, ngx_handle_write_event, ngx_log_t, ngx_msec_t, ngx_peer_connection_t,
    ngx_str_t, sockaddr, socklen_t, NGX_AGAIN, NGX_DECLINED, NGX_LOG_ALERT, NGX_LOG_DEBUG_ALL,
    NGX_OK,
};
use ngx::ngx_log_debug;

use super::subsystem::RrPeer;
use crate::core::check_answer::{head_end, MAX_HEAD};
use crate::core::health::Why;
use crate::core::table::Claim;

/// Probes of one process holding a connection at a time.
pub const MAX_IN_FLIGHT: usize = 64;

/// The head buffer a probe starts with; it doubles as it fills, up to
/// [`MAX_HEAD`].
const HEAD_START: usize = 1024;

/// Where a probe connects: a copy of a peer's address, and its name for
/// nginx's log lines.
#[derive(Clone)]
pub struct Target {
    addr: libc::sockaddr_storage,
    len: socklen_t,
    name: Vec<u8>,
}

impl Target {
    /// A copy of `len` bytes of the address at `addr` (of any family), or
    /// `None` if it is null, empty or larger than any address.
    ///
    /// # Safety
    /// `addr` is null or points at `len` readable bytes.
    pub unsafe fn new(addr: *const sockaddr, len: socklen_t, name: &[u8]) -> Option<Target> {
        let size = len as usize;
        if addr.is_null() || size == 0 || size > mem::size_of::<libc::sockaddr_storage>() {
            return None;
        }
        // SAFETY: all zeros is a valid sockaddr_storage.
        let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
        // SAFETY: the caller vouches for `len` bytes at `addr`; `storage`
        // is larger (checked above) and a local.
        unsafe { ptr::copy_nonoverlapping(addr.cast::<u8>(), addr_of_mut!(storage).cast(), size) };
        Some(Target {
            addr: storage,
            len,
            name: name.to_vec(),
        })
    }

    /// The same address with another port (the check's `port=`), its name
    /// changed to match; `None` for an address that has no port (a unix
    /// socket).
    pub fn with_port(&self, port: u16) -> Option<Target> {
        let mut addr = self.addr;
        match i32::from(addr.ss_family) {
            libc::AF_INET => {
                // SAFETY: an AF_INET sockaddr_storage holds a sockaddr_in.
                let sin = unsafe { &mut *addr_of_mut!(addr).cast::<libc::sockaddr_in>() };
                sin.sin_port = port.to_be();
            }
            libc::AF_INET6 => {
                // SAFETY: an AF_INET6 sockaddr_storage holds a sockaddr_in6.
                let sin6 = unsafe { &mut *addr_of_mut!(addr).cast::<libc::sockaddr_in6>() };
                sin6.sin6_port = port.to_be();
            }
            _ => return None,
        }
        Some(Target {
            addr,
            len: self.len,
            name: name_with_port(&self.name, port),
        })
    }

    pub fn name(&self) -> &[u8] {
        &self.name
    }

    /// The address's bytes (what two targets are compared by).
    fn addr_bytes(&self) -> &[u8] {
        // SAFETY: `len` bytes of the local copy, at most its size (`new`).
        unsafe { core::slice::from_raw_parts(addr_of!(self.addr).cast(), self.len as usize) }
    }

    /// A round-robin peer's address, with `port` instead of its own if
    /// given (the check's `port=`).
    pub fn of_peer(peer: &RrPeer, port: Option<u16>) -> Option<Target> {
        // SAFETY: round-robin's peer address, `socklen` bytes, living as
        // long as the peer; copied here.
        let target = unsafe { Target::new(peer.sockaddr, peer.socklen, peer.name.as_bytes()) }?;
        match port {
            Some(port) => target.with_port(port),
            None => Some(target),
        }
    }
}

impl PartialEq for Target {
    fn eq(&self, other: &Target) -> bool {
        self.addr_bytes() == other.addr_bytes()
    }
}

impl Eq for Target {}

impl core::hash::Hash for Target {
    fn hash<H: core::hash::Hasher>(&self, state: &mut H) {
        self.addr_bytes().hash(state);
    }
}

/// `host:80` → `host:<port>` (`[::1]:80` too); a name without a port gets
/// one.
fn name_with_port(name: &[u8], port: u16) -> Vec<u8> {
    let host = match name.iter().rposition(|&b| b == b':') {
        Some(colon) if !name.ends_with(b"]") => &name[..colon],
        _ => name,
    };
    let mut out = host.to_vec();
    out.extend_from_slice(format!(":{port}").as_bytes());
    out
}

/// Connects to `target` and, for an http check, sends `request` and reads
/// the response head: up to the blank line (CRLF or bare LF line ends, as
/// [`head_end`] finds it), the end of the stream or [`MAX_HEAD`] bytes,
/// whichever comes first (the caller parses it). A tcp
/// check (`request` `None`) passes once connected, with nothing read.
/// `timeout_ms` bounds the whole probe from its connect on (not its wait for
/// a turn).
///
/// Returns when the probe got its turn and started connecting (ms of
/// nginx's clock: the check's duration is measured from there), and what
/// it found.
/// `wanted` is asked once the turn came (the wait may have been long):
/// false ends the probe unopened, as `Why::NoConnection`.
pub async fn probe(
    target: &Target,
    timeout_ms: u32,
    request: Option<&[u8]>,
    wanted: impl Fn() -> bool,
) -> (u64, Result<Vec<u8>, Why>) {
    // Dropped last: the connection is closed before the turn is passed on.
    let _turn = Turn::wait().await;
    // SAFETY: a plain integer nginx updates with its cached time.
    let started = unsafe { nginx_sys::ngx_current_msec } as u64;
    if !wanted() {
        return (started, Err(Why::NoConnection));
    }
    (started, exchange(target, timeout_ms, request).await)
}

async fn exchange(
    target: &Target,
    timeout_ms: u32,
    request: Option<&[u8]>,
) -> Result<Vec<u8>, Why> {
    let mut conn = Conn::open(target, timeout_ms)?;
    conn.connected().await?;
    let Some(request) = request else {
        return Ok(Vec::new());
    };
    conn.send_all(request).await?;
    conn.read_head().await
}

/// Whether this process has connections to spare for a probe: checks
/// leave the last sixteenth of `worker_connections` to clients (nginx
/// would otherwise close idle keep-alive connections to make room, or
/// log an alert per probe once none is left).
fn connections_to_spare() -> bool {
    let (free, all) = connections();
    free > all / 16
}

/// The room this process has for probes, as the checks' lease weighs it
/// (`Claim::of_room`: the probes' own connections count as free).
pub fn room() -> Claim {
    let (free, all) = connections();
    Claim::of_room(free, turns().held, all)
}

/// This process's free connections and `worker_connections`.
pub fn connections() -> (usize, usize) {
    // SAFETY: the process's cycle, set before any module runs; plain
    // integers its connection allocator keeps.
    let cycle = unsafe { &*ngx_cycle };
    (cycle.free_connection_n, cycle.connection_n)
}

/// What the connection's `data` points at while it is open.
struct Peer {
    pc: ngx_peer_connection_t,
    /// What `pc.name` points at (the target's name).
    name: ngx_str_t,
    /// The task to wake on the connection's next event.
    waker: Option<Waker>,
}

/// An open probe connection; closing it is dropping it.
struct Conn {
    /// Owned (a leaked box): nginx holds its address while it is open.
    peer: NonNull<Peer>,
}

/// The connection and its two events, as one poll sees them.
struct Io<'a> {
    c: &'a mut ngx_connection_t,
    read: &'a mut ngx_event_t,
    write: &'a mut ngx_event_t,
}

impl Conn {
    /// Starts connecting; `Err` when the connect failed at once.
    fn open(target: &Target, timeout_ms: u32) -> Result<Conn, Why> {
        let peer = Box::new(Peer {
            // SAFETY: all zeros is how nginx starts a peer connection.
            pc: unsafe { mem::zeroed() },
            name: ngx_str_t {
                len: target.name.len(),
                data: target.name.as_ptr().cast_mut(),
            },
            waker: None,
        });
        let mut conn = Conn {
            peer: NonNull::from(Box::leak(peer)),
        };
        conn.connect(target)?;
        conn.arm(timeout_ms);
        Ok(conn)
    }

    fn peer(&mut self) -> &mut Peer {
        // SAFETY: our own box, freed only by `drop`; nginx reads it only
        // from an event handler, never while a poll or drop runs.
        unsafe { self.peer.as_mut() }
    }

    fn connect(&mut self, target: &Target) -> Result<(), Why> {
        if !connections_to_spare() {
            return Err(Why::NoConnection);
        }
        let peer = self.peer();
        let pc = &mut peer.pc;
        // nginx only reads the address (a copy the target owns, borrowed by
        // the probe until it ends) and the name.
        pc.sockaddr = ptr::addr_of!(target.addr).cast_mut().cast();
        pc.socklen = target.len;
        pc.name = addr_of_mut!(peer.name);
        pc.get = Some(ngx_event_get_peer);
        pc.log = quiet_log();
        // Resets and refusals seen by nginx's recv/send: `info`, not `error`.
        pc.set_log_error(ngx_connection_log_error_e_NGX_ERROR_INFO);
        // SAFETY: a peer connection set up as nginx's upstream does, at a
        // stable address.
        let rc = unsafe { ngx_event_connect_peer(pc) };
        let started = rc == NGX_OK as isize || rc == NGX_AGAIN as isize;
        if started && !pc.connection.is_null() {
            Ok(())
        } else if rc == NGX_DECLINED as isize && errno() != libc::EADDRNOTAVAIL {
            Err(Why::Refused)
        } else {
            // NGX_ERROR: no free connection or no socket, logged by nginx;
            // or no local port left (EADDRNOTAVAIL, best effort): ours.
            Err(Why::NoConnection)
        }
    }

    /// Points the connection at this probe and starts its deadline.
    fn arm(&mut self, timeout_ms: u32) {
        let data = self.peer.as_ptr().cast();
        let io = self.io();
        io.c.data = data;
        io.read.handler = Some(on_io);
        io.write.handler = Some(on_io);
        // Never keeps a gracefully exiting worker alive.
        io.read.set_cancelable(1);
        // SAFETY: the connection's read event, removed from the timers when
        // the connection closes.
        unsafe { ngx_add_timer(io.read, timeout_ms as ngx_msec_t) };
    }

    fn io(&mut self) -> Io<'_> {
        // SAFETY: set by `ngx_event_connect_peer` (checked in `connect`) and
        // cleared only by `drop`; a connection's events are separate objects
        // nginx allocated with it. Single-threaded: nginx is not using them
        // while we poll.
        unsafe {
            let c = &mut *self.peer().pc.connection;
            let read = &mut *c.read;
            let write = &mut *c.write;
            Io { c, read, write }
        }
    }

    /// Waits until the connect completes, and says how it ended.
    async fn connected(&mut self) -> Result<(), Why> {
        poll_fn(|cx| self.poll_connected(cx)).await
    }

    fn poll_connected(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Why>> {
        let io = self.io();
        if io.read.timedout() != 0 {
            return Poll::Ready(Err(Why::Timeout));
        }
        if io.write.ready() == 0 {
            return self.wait(cx, Side::Write);
        }
        Poll::Ready(connect_result(io.c.fd))
    }

    async fn send_all(&mut self, request: &[u8]) -> Result<(), Why> {
        let mut sent = 0;
        poll_fn(|cx| self.poll_send(cx, request, &mut sent)).await
    }

    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        request: &[u8],
        sent: &mut usize,
    ) -> Poll<Result<(), Why>> {
        loop {
            let io = self.io();
            if io.read.timedout() != 0 {
                return Poll::Ready(Err(Why::Timeout));
            }
            if *sent == request.len() {
                return Poll::Ready(Ok(()));
            }
            if io.write.ready() == 0 {
                return self.wait(cx, Side::Write);
            }
            let rest = &request[*sent..];
            let send = io.c.send.expect("nginx sets a connection's send");
            // SAFETY: nginx's send for this connection, from a live buffer.
            let n = unsafe { send(io.c, rest.as_ptr().cast_mut(), rest.len()) };
            match n {
                1.. => *sent += n as usize,
                // nginx cleared `write.ready`: the next turn waits.
                n if n == NGX_AGAIN as isize => {}
                _ => return Poll::Ready(Err(Why::Reset)),
            }
        }
    }

    async fn read_head(&mut self) -> Result<Vec<u8>, Why> {
        let mut head = Vec::with_capacity(HEAD_START);
        poll_fn(|cx| self.poll_read(cx, &mut head)).await?;
        Ok(head)
    }

    fn poll_read(&mut self, cx: &mut Context<'_>, head: &mut Vec<u8>) -> Poll<Result<(), Why>> {
        loop {
            let io = self.io();
            if io.read.timedout() != 0 {
                return Poll::Ready(Err(Why::Timeout));
            }
            if io.read.ready() == 0 {
                return self.wait(cx, Side::Read);
            }
            let before = head.len();
            if head.capacity() == before {
                // Full (never at MAX_HEAD: that ended the read): doubled.
                head.reserve_exact(before.min(MAX_HEAD - before));
            }
            let recv = io.c.recv.expect("nginx sets a connection's recv");
            let room = head.spare_capacity_mut();
            let size = room.len().min(MAX_HEAD - before);
            // SAFETY: nginx's recv for this connection, into the vector's
            // spare capacity (at least `size` bytes).
            let n = unsafe { recv(io.c, room.as_mut_ptr().cast(), size) };
            match n {
                1.. => {
                    // SAFETY: recv wrote these `n` bytes.
                    unsafe { head.set_len(before + n as usize) };
                    if head.len() >= MAX_HEAD || head_end(head, before).is_some() {
                        return Poll::Ready(Ok(()));
                    }
                }
                0 if head.is_empty() => return Poll::Ready(Err(Why::ClosedEarly)),
                0 => return Poll::Ready(Ok(())),
                n if n == NGX_AGAIN as isize => {}
                _ => return Poll::Ready(Err(Why::Reset)),
            }
        }
    }

    /// Waits for the next event of the connection: makes sure nginx
    /// watches `side`, and keeps the task's waker for the handlers.
    fn wait<T>(&mut self, cx: &mut Context<'_>, side: Side) -> Poll<Result<T, Why>> {
        let io = self.io();
        // SAFETY: the connection's own events.
        // Waiting to read, the write event is let go too: with a
        // level-triggered method (`poll`, `select`) a writable socket would
        // wake the task at every turn of the loop (a no-op on epoll).
        let rc = unsafe {
            match side {
                Side::Read => match ngx_handle_write_event(io.write, 0) {
                    rc if rc == NGX_OK as isize => ngx_handle_read_event(io.read, 0),
                    rc => rc,
                },
                Side::Write => ngx_handle_write_event(io.write, 0),
            }
        };
        if rc != NGX_OK as isize {
            // The event module refused (epoll_ctl failed): ours, not the
            // server's.
            return Poll::Ready(Err(Why::NoConnection));
        }
        let waker = &mut self.peer().waker;
        match waker {
            Some(w) => w.clone_from(cx.waker()),
            None => *waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let pc = &mut self.peer().pc;
        if !pc.connection.is_null() {
            // SAFETY: our open connection; nginx removes its timer, events
            // and posted events, so no handler runs for it after this.
            unsafe { ngx_close_connection(pc.connection) };
            pc.connection = ptr::null_mut();
        }
        // SAFETY: the box leaked in `open`, no longer known to nginx.
        drop(unsafe { Box::from_raw(self.peer.as_ptr()) });
    }
}

#[derive(Clone, Copy)]
enum Side {
    Read,
    Write,
}

/// Both events' handler: wakes the task awaiting the connection (which may
/// run at once, and close the connection: nothing is touched after).
extern "C" fn on_io(ev: *mut ngx_event_t) {
    if let Some(waker) = take_waker(ev) {
        waker.wake();
    }
}

fn take_waker(ev: *mut ngx_event_t) -> Option<Waker> {
    // SAFETY: nginx passes an event of an open probe connection: its `data`
    // is the connection (nginx's), whose `data` is the live `Peer` (the
    // connection is closed before the `Peer` is freed).
    let peer = unsafe { &mut *(*(*ev).data.cast::<ngx_connection_t>()).data.cast::<Peer>() };
    peer.waker.take()
}

/// How a connect that nginx saw complete ended (`SO_ERROR`).
fn connect_result(fd: libc::c_int) -> Result<(), Why> {
    let mut err: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: a socket of ours; `err` and `len` are locals of the right
    // sizes.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            addr_of_mut!(err).cast(),
            &mut len,
        )
    };
    if rc == -1 {
        err = errno();
    }
    match err {
        0 => Ok(()),
        libc::ECONNREFUSED => Err(Why::Refused),
        _ => Err(Why::Reset),
    }
}

fn errno() -> libc::c_int {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// The log of probe connections: the cycle's, showing `alert` and above
/// only (nginx logs some connect errors at `crit`: a missing unix socket),
/// unless debug logging is on (then everything, as asked).
fn quiet_log() -> *mut ngx_log_t {
    // The worker is single-threaded; refreshed at every probe, as the
    // cycle's log may change (a reload in single-process mode). Connections
    // still open keep pointing at it: they see the same values.
    static mut QUIET: mem::MaybeUninit<ngx_log_t> = mem::MaybeUninit::zeroed();
    // SAFETY: nginx sets the cycle and its log before any module runs.
    let cycle_log = unsafe { &*(*ngx_cycle).log };
    let mut log = *cycle_log;
    if log.log_level & NGX_LOG_DEBUG_ALL as usize == 0 {
        log.log_level = log.log_level.min(NGX_LOG_ALERT as usize);
    }
    // SAFETY: single-threaded worker; no reference to QUIET outlives this.
    unsafe {
        let quiet = &mut *addr_of_mut!(QUIET);
        quiet.write(log);
        quiet.as_mut_ptr()
    }
}

/// The queue of probes waiting for a connection of their own.
struct Turns {
    /// Turns held (probes with a connection, or about to open one).
    held: usize,
    next_ticket: u64,
    /// Waiting probes, first come first served.
    waiting: VecDeque<(u64, Waker)>,
    /// Tickets given a released turn, not yet polled to take it.
    handed: Vec<u64>,
    /// Wakers of probes handed a turn, woken by the outermost release
    /// (`Turn::release`), and whether one is waking them now.
    to_wake: VecDeque<Waker>,
    waking: bool,
}

fn turns() -> &'static mut Turns {
    static mut TURNS: Turns = Turns {
        held: 0,
        next_ticket: 0,
        waiting: VecDeque::new(),
        handed: Vec::new(),
        to_wake: VecDeque::new(),
        waking: false,
    };
    // SAFETY: single-threaded worker; callers use it briefly and never
    // wake a task (which may come back here) while holding it.
    unsafe { &mut *addr_of_mut!(TURNS) }
}

/// A turn held: released (to the next waiting probe, if any) when dropped.
struct Turn;

impl Turn {
    fn wait() -> WaitTurn {
        WaitTurn { ticket: None }
    }

    /// Gives the turn back, and hands turns to the waiting probes
    /// (`hand_on`). Waking a task runs it at once (ngx's scheduler): a
    /// probe that fails at once then releases its turn from inside this
    /// one's wake, and so on down the queue. So only the outermost release
    /// wakes, one probe after the other; a release inside a wake only
    /// queues its waker.
    fn release() {
        let t = turns();
        t.held -= 1;
        hand_on();
    }
}

/// Gives turns to the waiting probes, first come first served, while
/// turns are free and the process has connections to spare; wakes them
/// (only the outermost call: see `Turn::release`).
fn hand_on() {
    let t = turns();
    // Each turn handed and not taken yet is a connection about to be
    // opened: counted before it is (or every waiting probe but one would
    // find none and end "no connection").
    let (free, all) = connections();
    while t.held < MAX_IN_FLIGHT
        && !t.waiting.is_empty()
        && free.saturating_sub(t.handed.len()) > all / 16
    {
        let (ticket, waker) = t.waiting.pop_front().expect("not empty");
        t.held += 1;
        t.handed.push(ticket);
        t.to_wake.push_back(waker);
    }
    if t.waking {
        return;
    }
    t.waking = true;
    while let Some(waker) = turns().to_wake.pop_front() {
        waker.wake();
    }
    turns().waking = false;
}

/// The checks' tick: probes that waited for a connection to spare (none
/// was, and no probe of this process held one to give back) get their
/// turns once there is.
pub fn wake_waiting() {
    hand_on();
}

/// Forgets the probes waiting for a turn, before their tasks are dropped
/// (the checks stop): a turn released meanwhile then goes to none of them,
/// which would only open a connection to close it at once.
pub fn forget_waiting() {
    let t = turns();
    let waiting = mem::take(&mut t.waiting);
    let handed = mem::take(&mut t.handed);
    // Turns handed but not taken go back, as their probes are about to go.
    t.held -= handed.len();
    // Dropped outside the borrow: a waker's drop runs no task code here
    // (the tasks are still owned by the checker), but keep it clean.
    drop((waiting, handed));
}

impl Drop for Turn {
    fn drop(&mut self) {
        Turn::release();
    }
}

/// Waiting for a turn; dropping it leaves the queue (or passes on a turn
/// it was handed).
struct WaitTurn {
    ticket: Option<u64>,
}

impl Future for WaitTurn {
    type Output = Turn;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Turn> {
        let t = turns();
        if let Some(ticket) = self.ticket {
            if let Some(i) = t.handed.iter().position(|&h| h == ticket) {
                t.handed.swap_remove(i);
                self.ticket = None;
                return Poll::Ready(Turn);
            }
            if let Some(entry) = t.waiting.iter_mut().find(|(h, _)| *h == ticket) {
                entry.1.clone_from(cx.waker());
            }
            return Poll::Pending;
        }
        // No connection to spare: the probe waits (a turn freed, or the
        // checks' next tick, starts it), rather than fail and leave its
        // server unchecked until its next interval.
        if t.held < MAX_IN_FLIGHT
            && t.waiting.is_empty()
            && t.handed.is_empty()
            && connections_to_spare()
        {
            t.held += 1;
            return Poll::Ready(Turn);
        }
        let ticket = t.next_ticket;
        t.next_ticket = ticket.wrapping_add(1);
        t.waiting.push_back((ticket, cx.waker().clone()));
        self.ticket = Some(ticket);
        ngx_log_debug!(
            ngx::log::ngx_cycle_log().as_ptr(),
            "least_conn_persistent: probe waits for a turn ({} in flight)",
            t.held
        );
        Poll::Pending
    }
}

impl Drop for WaitTurn {
    fn drop(&mut self) {
        let Some(ticket) = self.ticket else { return };
        let handed = {
            let t = turns();
            t.waiting.retain(|(h, _)| *h != ticket);
            let i = t.handed.iter().position(|&h| h == ticket);
            i.map(|i| t.handed.swap_remove(i)).is_some()
        };
        if handed {
            Turn::release();
        }
    }
}
