//! FreeInit parity (being written).
