//! fleet (being written).
