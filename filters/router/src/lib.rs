//! Switchyard router filter (under construction).
