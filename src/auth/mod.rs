pub mod challenge;
pub mod digest;
pub mod ntlm;
