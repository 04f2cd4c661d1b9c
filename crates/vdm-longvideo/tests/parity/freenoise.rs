//! FreeNoise parity (being written).
