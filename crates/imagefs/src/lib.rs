//! imagefs
