//! Parity of the long-video algorithms with diffusers 0.42.1 on the oracle vectors in
//! `fixtures/oracle` (see `fixtures/oracle/PROVENANCE.md`), and their behaviour through a toy
//! downstream model.

mod freeinit;
mod freenoise;
