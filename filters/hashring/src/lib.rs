//! Switchyard hashring filter (under construction).
