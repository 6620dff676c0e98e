//! A scriptable SMTP server for the adapter's tests: real SMTP over TCP on
//! 127.0.0.1, answering as Postfix does unless told otherwise.
//!
//! Every step (greeting, EHLO, AUTH, MAIL, RCPT, DATA, the end of the
//! message, NOOP, RSET, QUIT) has a default reply; a test queues other
//! answers for a step, used in order, one per time the step comes up. It
//! records every command line and every message received. It can speak
//! TLS from the first byte, or offer STARTTLS, with a certificate a test
//! gives it.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

/// How the double protects its connections.
#[derive(Clone)]
pub(super) enum DoubleTls {
    /// Plain text; STARTTLS not offered.
    None,
    /// TLS from the first byte (port 465 style).
    Implicit(TlsAcceptor),
    /// Plain text, STARTTLS offered in the EHLO reply.
    StartTls(TlsAcceptor),
}

/// A connection, plain or TLS.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A point in the SMTP conversation where the server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Step {
    Greeting,
    Ehlo,
    Auth,
    Mail,
    Rcpt,
    Data,
    /// The reply to the message's final `.`.
    EndOfData,
    Noop,
    Rset,
    Quit,
}

impl Step {
    fn default_reply(self) -> &'static str {
        match self {
            Step::Greeting => "220 double.test ESMTP tuma test double",
            Step::Ehlo => "250-double.test\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 AUTH PLAIN",
            Step::Auth => "235 2.7.0 Authentication successful",
            Step::Mail => "250 2.1.0 Ok",
            Step::Rcpt => "250 2.1.5 Ok",
            Step::Data => "354 End data with <CR><LF>.<CR><LF>",
            Step::EndOfData => "250 2.0.0 Ok: queued as ABC123",
            Step::Noop | Step::Rset => "250 2.0.0 Ok",
            Step::Quit => "221 2.0.0 Bye",
        }
    }
}

/// What the server does at a step.
#[derive(Debug, Clone)]
pub(super) enum Answer {
    /// Reply with these lines (joined by CRLF, without the last CRLF).
    Say(String),
    /// Wait, then reply.
    Later(Duration, String),
    /// Close the connection without a word.
    Drop,
    /// Never answer, keeping the connection open.
    Hang,
}

/// One message as the server received it.
#[derive(Debug, Clone)]
pub(super) struct Received {
    /// The `MAIL FROM:` line.
    pub mail_from: String,
    /// The `RCPT TO:` lines.
    pub rcpt_to: Vec<String>,
    /// The message, dot-unstuffed, lines joined by CRLF.
    pub data: String,
    /// Whether it came over TLS.
    pub tls: bool,
}

#[derive(Default)]
struct State {
    script: HashMap<Step, VecDeque<Answer>>,
    commands: Vec<String>,
    messages: Vec<Received>,
    connections: usize,
}

impl State {
    fn answer(&mut self, step: Step) -> Answer {
        self.script
            .get_mut(&step)
            .and_then(VecDeque::pop_front)
            .unwrap_or_else(|| Answer::Say(step.default_reply().to_owned()))
    }
}

/// The running server; stops when dropped.
pub(super) struct SmtpDouble {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl SmtpDouble {
    /// Starts a plain-text server on a free port of 127.0.0.1.
    pub async fn start() -> SmtpDouble {
        SmtpDouble::start_with(DoubleTls::None).await
    }

    /// Starts a server on a free port of 127.0.0.1, with TLS as given.
    pub async fn start_with(tls: DoubleTls) -> SmtpDouble {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let state = Arc::new(Mutex::new(State::default()));
        let shared = Arc::clone(&state);
        let task = tokio::spawn(async move {
            let mut sessions = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                shared.lock().unwrap().connections += 1;
                let state = Arc::clone(&shared);
                match tls.clone() {
                    DoubleTls::None => {
                        sessions.spawn(serve(Box::new(stream), state, None, false, true))
                    }
                    DoubleTls::StartTls(acceptor) => {
                        sessions.spawn(serve(Box::new(stream), state, Some(acceptor), false, true))
                    }
                    DoubleTls::Implicit(acceptor) => sessions.spawn(async move {
                        // A client that refuses our certificate ends here.
                        if let Ok(stream) = acceptor.accept(stream).await {
                            serve(Box::new(stream), state, None, true, true).await;
                        }
                    }),
                };
            }
        });
        SmtpDouble { addr, state, task }
    }

    /// Queues `answer` for the next time `step` comes up.
    pub fn script(&self, step: Step, answer: Answer) -> &Self {
        self.state
            .lock()
            .unwrap()
            .script
            .entry(step)
            .or_default()
            .push_back(answer);
        self
    }

    /// Queues a reply for the next time `step` comes up.
    pub fn reply(&self, step: Step, text: &str) -> &Self {
        self.script(step, Answer::Say(text.to_owned()))
    }

    /// Every command line received, in order, over all connections.
    pub fn commands(&self) -> Vec<String> {
        self.state.lock().unwrap().commands.clone()
    }

    /// Every message received to its final `.`.
    pub fn messages(&self) -> Vec<Received> {
        self.state.lock().unwrap().messages.clone()
    }

    /// How many connections were opened.
    pub fn connections(&self) -> usize {
        self.state.lock().unwrap().connections
    }
}

impl Drop for SmtpDouble {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sends an answer; false when the connection is to end.
async fn say(out: &mut (impl AsyncWrite + Unpin), answer: Answer) -> bool {
    let text = match answer {
        Answer::Say(text) => text,
        Answer::Later(pause, text) => {
            tokio::time::sleep(pause).await;
            text
        }
        Answer::Drop => return false,
        Answer::Hang => std::future::pending().await,
    };
    out.write_all(format!("{text}\r\n").as_bytes())
        .await
        .is_ok()
        && out.flush().await.is_ok()
}

/// One connection: the greeting (`greet`: not after STARTTLS), then
/// commands until QUIT or the end. `starttls` is offered while it is `Some`;
/// `tls` says whether the stream is already encrypted.
fn serve(
    stream: Box<dyn Io>,
    state: Arc<Mutex<State>>,
    starttls: Option<TlsAcceptor>,
    tls: bool,
    greet: bool,
) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(async move {
        let next = |step: Step| state.lock().unwrap().answer(step);
        let mut io = BufReader::new(stream);
        if greet && !say(&mut io, next(Step::Greeting)).await {
            return;
        }
        let mut mail_from = String::new();
        let mut rcpt_to = Vec::new();
        let mut line = String::new();
        loop {
            line.clear();
            match io.read_line(&mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let command = line.trim_end_matches(['\r', '\n']).to_owned();
            state.lock().unwrap().commands.push(command.clone());
            let verb = command
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_ascii_uppercase();
            let answer = match verb.as_str() {
                "EHLO" => match (next(Step::Ehlo), &starttls) {
                    (Answer::Say(text), Some(_)) if text == Step::Ehlo.default_reply() => {
                        Answer::Say(text.replacen("\r\n", "\r\n250-STARTTLS\r\n", 1))
                    }
                    (answer, _) => answer,
                },
                "HELO" => Answer::Say("250 double.test".into()),
                "STARTTLS" if starttls.is_some() => {
                    Answer::Say("220 2.0.0 Ready to start TLS".into())
                }
                "AUTH" => next(Step::Auth),
                "MAIL" => {
                    mail_from = command.clone();
                    rcpt_to.clear();
                    next(Step::Mail)
                }
                "RCPT" => {
                    rcpt_to.push(command.clone());
                    next(Step::Rcpt)
                }
                "DATA" => next(Step::Data),
                "NOOP" => next(Step::Noop),
                "RSET" => next(Step::Rset),
                "QUIT" => next(Step::Quit),
                _ => Answer::Say("502 5.5.2 Error: command not recognized".into()),
            };
            let takes_data =
                verb == "DATA" && matches!(&answer, Answer::Say(t) if t.starts_with("354"));
            if !say(&mut io, answer).await || verb == "QUIT" {
                return;
            }
            if verb == "STARTTLS"
                && let Some(acceptor) = &starttls
            {
                if let Ok(stream) = acceptor.accept(io.into_inner()).await {
                    serve(Box::new(stream), Arc::clone(&state), None, true, false).await;
                }
                return;
            }
            if takes_data {
                let mut data = Vec::new();
                loop {
                    line.clear();
                    match io.read_line(&mut line).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    let text = line.trim_end_matches(['\r', '\n']);
                    if text == "." {
                        break;
                    }
                    data.push(text.strip_prefix('.').unwrap_or(text).to_owned());
                }
                state.lock().unwrap().messages.push(Received {
                    mail_from: mail_from.clone(),
                    rcpt_to: rcpt_to.clone(),
                    data: data.join("\r\n"),
                    tls,
                });
                if !say(&mut io, next(Step::EndOfData)).await {
                    return;
                }
            }
        }
    })
}
