//! Running work that may block for milliseconds (an fsync, a plugin's `init`, a tenant's slow
//! plugin call) from async code without holding up the other tasks of the same worker.

/// Runs `f`, letting the tokio scheduler move this worker's other tasks to another thread
/// when `slow` and on a multi-threaded runtime; elsewhere (a current-thread runtime, a plain
/// thread) it simply runs `f`.
pub fn blocking<T>(slow: bool, f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(handle) if slow && handle.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}
