//! SQLite's memory: mimalloc, as the rest of the process.
//!
//! Left alone, SQLite allocates with the C library's `malloc`. Each connection runs on a thread
//! of its own, and a page of messages is hundreds of allocations on the reading thread (sqlx
//! copies every value out of SQLite) that the task then frees on a runtime thread: glibc's arenas
//! were locked and consolidated on every page. [`configure`] points SQLite at mimalloc, which the
//! server already uses for everything else (getThreadMessages +8-15% on SQLite, measured side by
//! side). SQLite's memory statistics are compiled out (`.cargo/config.toml`), so its allocations
//! take no lock of SQLite's own either.
//!
//! This is the workspace's one `unsafe` module: SQLite's documented `sqlite3_config` hook, called
//! through libsqlite3-sys (the bindings sqlx itself links).

#![allow(unsafe_code)]

use std::{
    ffi::{c_int, c_void},
    sync::Once,
};

use libsqlite3_sys as ffi;

/// Configures SQLite's allocator, once per process, before its first connection. Should SQLite
/// already be running (another library opened a database first), it keeps its own allocator
/// and says so in the log.
pub(crate) fn configure() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let methods = ffi::sqlite3_mem_methods {
            xMalloc: Some(malloc),
            xFree: Some(free),
            xRealloc: Some(realloc),
            xSize: Some(size),
            xRoundup: Some(roundup),
            xInit: Some(init),
            xShutdown: Some(shutdown),
            pAppData: std::ptr::null_mut(),
        };
        // SAFETY: `sqlite3_config` may be called before SQLite is initialized and from one
        // thread at a time (the `Once`). SQLite copies `methods` before it returns; once it is
        // running it answers SQLITE_MISUSE and changes nothing.
        let status = unsafe {
            ffi::sqlite3_config(
                ffi::SQLITE_CONFIG_MALLOC,
                &methods as *const ffi::sqlite3_mem_methods,
            )
        };
        if status != ffi::SQLITE_OK {
            tracing::warn!(
                status,
                "SQLite was started before it could be configured: it keeps the C allocator"
            );
        }
    });
}

// SQLite calls these with the sizes and pointers its allocator contract promises: sizes above
// zero, and pointers that came from `malloc` or `realloc` here. mimalloc aligns every block to
// at least 8 bytes, as SQLite needs, and SQLite's blocks fit in an int.

unsafe extern "C" fn malloc(n: c_int) -> *mut c_void {
    // SAFETY: see above.
    unsafe { libmimalloc_sys::mi_malloc(n as usize) }
}

unsafe extern "C" fn free(p: *mut c_void) {
    // SAFETY: see above.
    unsafe { libmimalloc_sys::mi_free(p) }
}

unsafe extern "C" fn realloc(p: *mut c_void, n: c_int) -> *mut c_void {
    // SAFETY: see above.
    unsafe { libmimalloc_sys::mi_realloc(p, n as usize) }
}

unsafe extern "C" fn size(p: *mut c_void) -> c_int {
    // SAFETY: see above.
    unsafe { libmimalloc_sys::mi_usable_size(p) as c_int }
}

unsafe extern "C" fn roundup(n: c_int) -> c_int {
    // SAFETY: a function of the size alone.
    unsafe { libmimalloc_sys::mi_good_size(n as usize) as c_int }
}

unsafe extern "C" fn init(_: *mut c_void) -> c_int {
    ffi::SQLITE_OK
}

unsafe extern "C" fn shutdown(_: *mut c_void) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_allocates_from_mimalloc() {
        configure();
        // SAFETY: a block from SQLite's allocator, looked at and given back to it.
        unsafe {
            let block = ffi::sqlite3_malloc(1000);
            assert!(!block.is_null());
            assert!(libmimalloc_sys::mi_is_in_heap_region(block));
            assert!(ffi::sqlite3_msize(block) >= 1000);
            ffi::sqlite3_free(block);
        }
    }
}
