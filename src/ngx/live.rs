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

use core::ffi::c_void;

use nginx_sys::{
    ngx_http_upstream_t, ngx_peer_connection_t, ngx_pool_cleanup_add, ngx_queue_init,
    ngx_queue_insert_before, ngx_queue_remove, ngx_queue_t, ngx_stream_upstream_t,
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
    /// A stream session's upstream: long-lived once connected, if TCP.
    #[cfg_attr(not(feature = "stream"), allow(dead_code))]
    Stream(NonNull<ngx_stream_upstream_t>),
}

impl Conn {
    fn peer(&self) -> &ngx_peer_connection_t {
        // SAFETY: the upstream (and its peer connection) lives in the
        // request's or session's pool, which holds the node that holds this.
        unsafe {
            match *self {
                Conn::Http(u) => &u.as_ref().peer,
                Conn::Stream(u) => &u.as_ref().peer,
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

/// The pool's cleanup: the node off its list before the pool's memory goes.
extern "C" fn unlink(data: *mut c_void) {
    // SAFETY: the node `track` linked and registered this cleanup for, whose
    // first field is its queue link (single-threaded worker).
    unsafe { ngx_queue_remove(data.cast::<ngx_queue_t>()) };
}

impl<T> LiveList<T> {
    /// Links a node for `owner` (which lives in `pool`) and its connection,
    /// started at `now_ms`; the pool's cleanup unlinks it. `None`: no memory.
    pub fn track(&self, pool: &Pool, owner: NonNull<T>, conn: Conn, now_ms: u64) -> Option<()> {
        let node = NonNull::new(pool.alloc(size_of::<LiveNode<T>>()).cast::<LiveNode<T>>())?;
        // SAFETY: a cleanup entry of the node's pool, for the node.
        let cleanup = unsafe { ngx_pool_cleanup_add(pool.as_ptr(), 0).as_mut() }?;
        // SAFETY: fresh pool memory, sized and aligned (to pointers) for the
        // node, which stays there until the pool's cleanup unlinks it; the
        // head is boxed and lives as long as the configuration. The
        // cleanup is armed once the node is linked.
        unsafe {
            node.as_ptr().write(LiveNode {
                queue: core::mem::zeroed(),
                owner,
                conn,
                since_ms: now_ms,
                closing: Cell::new(false),
            });
            ngx_queue_insert_before(self.head.get(), node.as_ptr().cast());
        }
        // The queue link is the node's first field, whatever `T`.
        cleanup.data = node.as_ptr().cast();
        cleanup.handler = Some(unlink);
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

    /// Connected, and long-lived: an http connection nginx upgraded (the
    /// server answered 101 to a client that asked: WebSocket or another
    /// protocol), a stream TCP session once connected; never a plain http
    /// request in flight, one whose response headers are still coming, a
    /// session still connecting, nor a UDP session. Not once its close
    /// started.
    pub fn long_lived(&self) -> bool {
        let pc = self.conn.peer();
        if pc.connection.is_null() || self.closing.get() {
            return false;
        }
        // SAFETY: as in `Conn::peer`.
        match self.conn {
            Conn::Http(u) => unsafe {
                let u = u.as_ref();
                u.upgrade() != 0 && u.headers_in.status_n == 101
            },
            Conn::Stream(u) => unsafe {
                u.as_ref().connected() != 0 && pc.type_ == libc::SOCK_STREAM
            },
        }
    }

    /// Its close started and nginx has not finalized it yet: still counted.
    pub fn closing(&self) -> bool {
        self.closing.get() && !self.conn.peer().connection.is_null()
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
        if c.fd == -1 || self.closing.get() {
            return false;
        }
        // SAFETY: the connection's own socket.
        let done = unsafe { libc::shutdown(c.fd, libc::SHUT_RDWR) == 0 };
        self.closing.set(done);
        done
    }
}
