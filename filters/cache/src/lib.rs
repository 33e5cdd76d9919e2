//! Switchyard cache filter (under construction).
