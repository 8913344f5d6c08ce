//! A worker's live connections of one upstream, as rebalancing needs them:
//! which server each counts on, how old it is, whether it is long-lived,
//! and a way to close it. Intrusive (nginx's `ngx_queue_t`): each node sits
//! in its request's (or session's) pool, linked once when the request's
//! balancer data is set up, unlinked by that pool's cleanup, so a pick
//! allocates nothing and a node never outlives its request.

use core::cell::{Cell, UnsafeCell};
use core::fmt;
use core::marker::PhantomData;
use core::ptr::{self, NonNull};

use nginx_sys::{
    ngx_http_upstream_t, ngx_peer_connection_t, ngx_queue_init, ngx_queue_insert_before,
    ngx_queue_remove, ngx_queue_t,
};
use ngx::core::Pool;

/// The head of a list of `LiveNode<T>`s; its own heap cell, so that it
/// stays put when the structure holding it moves.
pub struct LiveList<T> {
    head: Box<UnsafeCell<ngx_queue_t>>,
    _nodes: PhantomData<*const T>,
}

impl<T> Default for LiveList<T> {
    fn default() -> Self {
        // SAFETY: an all-zero queue, made a valid empty one (pointing at
        // itself) once boxed, where it stays.
        let head = Box::new(UnsafeCell::new(unsafe { core::mem::zeroed() }));
        // SAFETY: the boxed head, not yet shared.
        unsafe { ngx_queue_init(head.get()) };
        LiveList {
            head,
            _nodes: PhantomData,
        }
    }
}

impl<T> fmt::Debug for LiveList<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LiveList")
    }
}

/// What a node knows of its connection to the upstream server.
#[derive(Clone, Copy, Debug)]
pub enum Conn {
    /// An http request's upstream: long-lived once upgraded (a 101).
    #[cfg_attr(feature = "stream", allow(dead_code))]
    Http(NonNull<ngx_http_upstream_t>),
    /// A stream session's upstream connection: long-lived if TCP.
    #[cfg_attr(not(feature = "stream"), allow(dead_code))]
    Stream(NonNull<ngx_peer_connection_t>),
}

impl Conn {
    fn peer(&self) -> &ngx_peer_connection_t {
        // SAFETY: the upstream (and its peer connection) lives as long as
        // the request or session, whose pool holds the node that holds this.
        unsafe {
            match *self {
                Conn::Http(u) => &u.as_ref().peer,
                Conn::Stream(pc) => pc.as_ref(),
            }
        }
    }
}

/// One tracked connection. `queue` first: a queue link is its node.
#[repr(C)]
pub struct LiveNode<T> {
    queue: ngx_queue_t,
    owner: NonNull<T>,
    conn: Conn,
    since_ms: u64,
    closing: Cell<bool>,
}

impl<T> Drop for LiveNode<T> {
    /// The pool's cleanup: off the list before the pool's memory goes.
    fn drop(&mut self) {
        // SAFETY: linked by `track` (single-threaded worker).
        unsafe { ngx_queue_remove(&mut self.queue) };
    }
}

impl<T> LiveList<T> {
    /// Links a node for `owner` (which lives in `pool`) and its connection,
    /// started at `now_ms`; the pool's cleanup unlinks it. `None`: no memory.
    pub fn track(&self, pool: &Pool, owner: &T, conn: Conn, now_ms: u64) -> Option<()> {
        let node = pool.allocate(LiveNode {
            // SAFETY: all-zero links, set by the insertion below.
            queue: unsafe { core::mem::zeroed() },
            owner: NonNull::from(owner),
            conn,
            since_ms: now_ms,
            closing: Cell::new(false),
        });
        // SAFETY: fresh pool memory holding the node, which stays there
        // until the pool's cleanup (registered by `allocate`) unlinks it;
        // the head is boxed, and lives as long as the configuration.
        let node = unsafe { node.as_mut() }?;
        // SAFETY: as above.
        unsafe { ngx_queue_insert_before(self.head.get(), &mut node.queue) };
        Some(())
    }

    pub fn is_empty(&self) -> bool {
        // SAFETY: an initialized head.
        unsafe { ptr::eq((*self.head.get()).next, self.head.get()) }
    }

    /// Calls `f` with each node's owner and node, oldest first. `f` must not
    /// free requests (closing only starts a close: `LiveNode::close`).
    pub fn for_each(&self, mut f: impl FnMut(&T, &LiveNode<T>)) {
        let head = self.head.get();
        // SAFETY: every link of the list is a `LiveNode<T>` (`track`), in a
        // pool that has not run its cleanup yet (which unlinks it), whose
        // owner lives in the same pool.
        unsafe {
            let mut q = (*head).next;
            while !ptr::eq(q, head) {
                let next = (*q).next;
                let node = &*q.cast::<LiveNode<T>>();
                f(node.owner.as_ref(), node);
                q = next;
            }
        }
    }
}

impl<T> LiveNode<T> {
    pub fn age_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.since_ms)
    }

    /// A number of its own, the same every time it is asked.
    pub fn salt(&self) -> u64 {
        ptr::from_ref(self) as u64
    }

    /// Connected, and long-lived: an http connection the server upgraded
    /// (101: WebSocket or another protocol), a stream TCP session; never a
    /// plain http request in flight, nor a UDP session. Not once its close
    /// started.
    pub fn long_lived(&self) -> bool {
        let pc = self.conn.peer();
        if pc.connection.is_null() || self.closing.get() {
            return false;
        }
        match self.conn {
            // SAFETY: as in `Conn::peer`.
            Conn::Http(u) => unsafe { u.as_ref().headers_in.status_n == 101 },
            Conn::Stream(_) => pc.type_ == libc::SOCK_STREAM,
        }
    }

    /// Starts closing the upstream connection: shuts its socket down both
    /// ways, so that nginx reads the end of it as if the server had closed,
    /// sends the client what it still holds and finalizes the request or
    /// session the normal way (the count is released there, once). False
    /// if there is no connection to close.
    pub fn close(&self) -> bool {
        let pc = self.conn.peer();
        // SAFETY: the peer connection's current connection, if any.
        let Some(c) = (unsafe { pc.connection.as_ref() }) else {
            return false;
        };
        if c.fd == -1 || self.closing.replace(true) {
            return false;
        }
        // SAFETY: the connection's own socket.
        unsafe { libc::shutdown(c.fd, libc::SHUT_RDWR) == 0 }
    }
}
