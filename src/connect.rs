// TEMPORARY STUB
pub const MAX_HEAD: usize = 16384;
pub fn build_request(dest: &str, auth: Option<&str>, headers: &[String]) -> Vec<u8> {
    let mut s = format!("CONNECT {dest} HTTP/1.1\r\nHost: {dest}\r\n");
    if let Some(a) = auth {
        s.push_str(&format!("Proxy-Authorization: {a}\r\n"));
    }
    for h in headers {
        s.push_str(h);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s.into_bytes()
}
pub fn basic_authorization(user: &str, password: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}
pub enum Answer {
    Partial,
    Complete(Head),
}
pub struct Head {
    pub status: u16,
    pub head_len: usize,
    pub status_line: String,
    pub proxy_authenticate: Vec<String>,
}
#[derive(Debug)]
pub enum ParseError {
    TooLarge,
    Malformed(String),
}
impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}
pub fn is_success(s: u16) -> bool {
    (200..300).contains(&s)
}
pub fn parse_answer(buf: &[u8]) -> Result<Answer, ParseError> {
    let mut h = [httparse::EMPTY_HEADER; 64];
    let mut r = httparse::Response::new(&mut h);
    match r.parse(buf) {
        Ok(httparse::Status::Partial) => {
            if buf.len() > MAX_HEAD {
                Err(ParseError::TooLarge)
            } else {
                Ok(Answer::Partial)
            }
        }
        Ok(httparse::Status::Complete(n)) => Ok(Answer::Complete(Head {
            status: r.code.unwrap_or(0),
            head_len: n,
            status_line: format!(
                "HTTP/1.{} {} {}",
                r.version.unwrap_or(1),
                r.code.unwrap_or(0),
                r.reason.unwrap_or("")
            ),
            proxy_authenticate: vec![],
        })),
        Err(e) => Err(ParseError::Malformed(e.to_string())),
    }
}
