# Random and malformed requests (issue 10): thousands of seeded random requests over HTTP/1.0,
# HTTP/1.1 (keep-alive or not, pipelined, chunked bodies, bad lengths, truncated) and HTTP/2
# (prior knowledge, a small raw client here) to every kind of location the module has, while two
# control streams (one HTTP/1.1, one HTTP/2) on a control channel must receive exactly a known
# sequence of events published in between. Afterwards every request must have been answered or
# closed in time, the zone must be back to its figures from before the random phase, and the
# server must still answer at once. error.log is checked at teardown (sanitizer, alert, crit).
#
#   SSE_RANDOM_SEED=1234 prove -v t/51_random_requests.t      replays one run
#   SSE_RANDOM_REQUESTS=6000                                  more requests (default 3200)
#   SSE_KEEP=1                                                keeps the directory with requests.log
#   SSE_RANDOM_PROTO=h1|h2, SSE_RANDOM_NO_CHUNKED=1          narrow a failure down
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use IO::Socket::INET;
use IO::Select;
use Socket qw(SOL_SOCKET SO_RCVBUF SHUT_WR IPPROTO_TCP TCP_NODELAY);
use Errno qw(EAGAIN EWOULDBLOCK EINPROGRESS);
use JSON::PP;
use Time::HiRes qw(sleep time);
use SSETest;
use SSEExpect qw(frame first_difference);

$SIG{PIPE} = 'IGNORE';

my $seed = $ENV{SSE_RANDOM_SEED} // (time() ^ ($$ << 8)) % 1_000_000_007;
$seed = int($seed);
srand($seed);
diag("random seed: $seed (replay with SSE_RANDOM_SEED=$seed)");
my $N = $ENV{SSE_RANDOM_REQUESTS} // 3200;
my $SAN = $ENV{SSE_SANITIZED} ? 1 : 0;
# How long an answer (or a close) may take: generous under the sanitizers.
my $T_FIRST = $SAN ? 10 : 6;    # first response byte or close of a fully sent request
my $T_END = $SAN ? 15 : 10;     # end of a response that has an end
my $HARD_LIMIT = 75;            # the random phase stops starting requests after this long
my $MAXC = 40;                  # connections open at once
# SSE_RANDOM_PROTO=h1 or h2: that protocol only (to narrow a failure down).
my $H1_OK = ($ENV{SSE_RANDOM_PROTO} // 'h1') ne 'h2';
my $H2_OK = ($ENV{SSE_RANDOM_PROTO} // 'h2') ne 'h1';

my $locations = <<'CONF';
        sse_history 0;
        client_max_body_size 256k;
        client_header_timeout 2s;
        client_body_timeout 2s;
        send_timeout 3s;
        keepalive_timeout 3s;
        lingering_timeout 1s;
        location = /events {
            sse_subscribe $arg_topics;
            sse_event_filter $arg_types;
            sse_user $http_x_user;
            sse_max_subscribers_per_key $http_x_key 3;
            sse_subscribe_patterns on;
            sse_subscribe_allow "r*" "blog.*" "u.*" "$http_x_allow";
            sse_client_channel on;
            sse_connected_event connected;
            sse_heartbeat 1s;
            sse_retry 1500ms;
            sse_max_channels 8;
        }
        location = /plain {
            sse_subscribe $arg_topics;
            sse_heartbeat off;
        }
        location = /resume {
            sse_subscribe $arg_topics;
            sse_user $http_x_user;
            sse_replay 3;
            sse_send_buffer 4k;
            sse_heartbeat 1s;
        }
        location = /ctl {
            sse_subscribe ctl.main;
            sse_heartbeat 1s;
        }
        location = /ctlpub {
            sse_publish ctl.main;
        }
        location = /pub {
            sse_publish $arg_topic;
        }
        location = /pubh {
            sse_publish "hist.a,hist.b";
            sse_history 5;
        }
        location = /to-user {
            sse_publish_user $arg_user;
        }
        location = /to-client {
            sse_publish_client $arg_id;
        }
        location = /stats {
            sse_stats;
        }
        location = /clients {
            sse_clients;
        }
CONF

my $t = SSETest->new(extra_ports => 1, server => $locations, http => <<"CONF")->start;
    sse_shm_size 8m;
    sse_max_subscribers 60;
    server {
        listen 127.0.0.1:%%PORT1%% http2;
$locations
    }
CONF
END { local $?; $t->stop if $t }

my $P1 = $t->port;
my $P2 = $t->port(1);
my @workers0 = $t->worker_pids;

open my $LOG, '>', $t->dir . '/requests.log' or die $!;
binmode $LOG;
sub logreq { my ($id, $what, $bytes) = @_; print $LOG "#$id $what " . esc($bytes) . "\n" }

sub esc {
    my ($s) = @_;
    $s = substr($s, 0, 600) . '...(' . length($s) . ' bytes)' if length $s > 600;
    $s =~ s/([\\])/\\\\/g;
    $s =~ s/([^\x20-\x7e])/sprintf('\\x%02x', ord $1)/ge;
    return $s;
}

sub pick { return $_[int rand @_] }
sub chance { return rand() < $_[0] }

# ---------------------------------------------------------------- a small raw HTTP/2 client
package H2 {
    use Time::HiRes qw(time);

    sub frame {
        my ($type, $flags, $sid, $payload) = @_;
        $payload //= '';
        return substr(pack('N', length $payload), 1) . pack('CCN', $type, $flags, $sid & 0x7fffffff) . $payload;
    }
    sub int_enc {
        my ($v, $bits, $first) = @_;
        my $max = (1 << $bits) - 1;
        return chr($first | $v) if $v < $max;
        my $s = chr($first | $max);
        $v -= $max;
        while ($v >= 128) { $s .= chr(($v % 128) + 128); $v = int($v / 128) }
        return $s . chr($v);
    }
    sub str_enc { my ($s) = @_; return int_enc(length $s, 7, 0) . $s }
    # HPACK: every field a literal without indexing, new name, no Huffman.
    sub hpack { my $b = ''; for my $h (@_) { $b .= "\x00" . str_enc($h->[0]) . str_enc($h->[1]) } return $b }
    sub settings { my %s = @_; return frame(4, 0, 0, join '', map { pack('nN', $_, $s{$_}) } sort keys %s) }
    sub preface { return "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" }
    sub window_update { my ($sid, $n) = @_; return frame(8, 0, $sid, pack('N', $n)) }

    # Splits complete frames off $$buf: ([type, flags, sid, payload], ...).
    sub parse {
        my ($buf) = @_;
        my @f;
        while (length $$buf >= 9) {
            my $len = unpack('N', "\0" . substr($$buf, 0, 3));
            last if length $$buf < 9 + $len;
            my ($type, $flags, $sid) = unpack('CCN', substr($$buf, 3, 6));
            push @f, [$type, $flags, $sid & 0x7fffffff, substr($$buf, 9, $len)];
            substr($$buf, 0, 9 + $len, '');
        }
        return @f;
    }
}

# The HTTP/2 control stream: GET /ctl on port 2, its DATA gathered into body.
package H2Stream {
    sub new {
        my ($class, $port, $path) = @_;
        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port, Proto => 'tcp') or die "connect: $!";
        $s->blocking(0);
        my $self = bless {sock => $s, in => '', body => '', status => undef, eof => 0, out => ''}, $class;
        $self->{out} = H2::preface() . H2::settings(4 => 1 << 20) . H2::window_update(0, 1 << 24)
            . H2::frame(1, 0x4 | 0x1, 1, H2::hpack([':method', 'GET'], [':scheme', 'http'], [':path', $path],
                                                    [':authority', 'localhost'], ['accept', 'text/event-stream']));
        $self->flush;
        return $self;
    }
    sub flush {
        my ($self) = @_;
        while (length $self->{out}) {
            my $n = syswrite($self->{sock}, $self->{out});
            last unless $n;
            substr($self->{out}, 0, $n, '');
        }
    }
    sub fill {
        my ($self) = @_;
        return if $self->{eof};
        my $n = sysread($self->{sock}, my $chunk, 65536);
        if (!defined $n) { return if $!{EAGAIN}; $self->{eof} = 1; return }
        if ($n == 0) { $self->{eof} = 1; return }
        $self->{in} .= $chunk;
        for my $f (H2::parse(\$self->{in})) {
            my ($type, $flags, $sid, $p) = @$f;
            if ($type == 4 && !($flags & 1)) { $self->{out} .= H2::frame(4, 1, 0, '') }
            elsif ($type == 6 && !($flags & 1)) { $self->{out} .= H2::frame(6, 1, 0, $p) }
            elsif ($type == 1 && $sid == 1) { $self->{status} = ord($p) == 0x88 ? 200 : 'not 200: ' . unpack('H*', substr($p, 0, 8)) }
            elsif ($type == 0 && $sid == 1) {
                $self->{body} .= $p;
                $self->{out} .= H2::window_update(0, length $p) . H2::window_update(1, length $p) if length $p;
                $self->{ended} = 1 if $flags & 1;
            }
            elsif ($type == 3 && $sid == 1) { $self->{reset} = unpack('N', $p) }
            elsif ($type == 7) { $self->{goaway} = 1 }
        }
        $self->flush;
    }
}
package main;

# ---------------------------------------------------------------- random parts
my @POOL = qw(r0 r1 r2 r3 r4 r5 blog.x blog.y u.a u.b hist.a hist.b);
my @PATTERNS = ('*', 'r*', 'blog.*', 'u.*', 'x*', 'r1*');
my @USERS = ('u1', 'u2', 'u3', 'alice', 'bob');
my @EVENTS = ('a', 'b.created', 'blog.post', 'message', 'x.y.z');
my @SPECIAL = ("\r", "\n", "\0", "\e", '"', "'", '\\', "\xff", "\xc3\x28", "\xe2\x82", "\xf0\x9f\x98", "\xed\xa0\x80",
               ',', '*', '%', '+', ' ', '#', '?', '&', '=', '/', ';', "\t", "\x7f");
my %client_ids;    # client ids seen in the connected events of random streams
my %control_ids;   # never disconnected by random requests
my @seen_ids;      # event ids seen in publish answers

sub rnd_bytes {
    my ($n) = @_;
    my $s = '';
    while (length $s < $n) {
        my $r = rand;
        $s .= $r < 0.55 ? chr(0x61 + int rand 26) : $r < 0.7 ? chr(0x20 + int rand 95) : $r < 0.9 ? pick(@SPECIAL) : chr(int rand 256);
    }
    return substr($s, 0, $n);
}
sub rnd_len { my $r = rand; return $r < 0.5 ? int rand 8 : $r < 0.8 ? int rand 64 : $r < 0.95 ? int rand 600 : 1000 + int rand 9000 }

sub pct {    # percent-escapes what a URI cannot hold, and a random part of the rest
    my ($s, $all) = @_;
    $s =~ s/([^A-Za-z0-9._~:@\/,*!\$'()+-])/sprintf('%%%02X', ord $1)/ge;
    $s =~ s/([A-Za-z0-9,*])/rand() < 0.1 ? sprintf('%%%02X', ord $1) : $1/ge if $all || rand() < 0.2;
    return $s;
}

sub id_value {
    my $r = rand;
    return @seen_ids ? $seen_ids[int rand @seen_ids] : '1' if $r < 0.3;
    return @seen_ids ? $seen_ids[int rand @seen_ids] + pick(-1, 1, 1000) : '0' if $r < 0.4;
    return pick('', '0', '-1', '18446744073709551615', '18446744073709551616', '99999999999999999999999',
                '1e9', '0x10', ' 5', '5 ', '00000000000000000001', '1,2', "1\e", 'garbage') if $r < 0.8;
    return rnd_bytes(rnd_len());
}

# A channel list (raw text, escaped later).
sub topics_text {
    my ($patterns) = @_;
    my $r = rand;
    return pick(@POOL) if $r < 0.3;
    return join ',', map { chance(0.3) && $patterns ? pick(@PATTERNS) : pick(@POOL) } 1 .. 1 + int rand 4 if $r < 0.55;
    return join(',' x (1 + int rand 5), '', pick(@POOL), pick(@POOL), '') if $r < 0.62;
    return join ',', map { "r$_" } 1 .. 20 + int rand 30 if $r < 0.66;
    return ',' x (1 + int rand 3000) if $r < 0.69;
    return 'r' x (120 + int rand 20) if $r < 0.73;
    return 'r1' . ('x' x (1000 + int rand 7000)) if $r < 0.75;
    return pick(@PATTERNS) . ',' . pick(@PATTERNS) if $r < 0.8;
    return '' if $r < 0.83;
    return pick(@POOL) . pick(@SPECIAL) . rnd_bytes(rnd_len()) if $r < 0.93;
    return rnd_bytes(rnd_len());
}

sub qarg {    # name=value, value escaped (or, now and then, raw or with bad escapes)
    my ($name, $value) = @_;
    my $r = rand;
    my $v = $r < 0.85 ? pct($value) : $r < 0.93 ? $value : pct($value) . pick('%', '%z', '%zz', '%4', '%%', '%0', '%u0041');
    return "$name=$v";
}

sub query_for {
    my ($loc) = @_;
    my @q;
    if ($loc eq '/events' || $loc eq '/plain' || $loc eq '/resume') {
        push @q, qarg('topics', topics_text($loc eq '/events')) if chance(0.95);
        push @q, qarg('types', chance(0.7) ? join(',', map { chance(0.5) ? pick(@EVENTS) : pick('*', '*.created', 'b.*', '?', 'blog.*', '**', '') } 1 .. 1 + int rand 3)
                                          : chance(0.5) ? join(',', ('a') x (20 + int rand 30)) : rnd_bytes(rnd_len())) if chance(0.4);
        push @q, qarg('last_event_id', id_value()) if chance(0.15);
    } elsif ($loc eq '/pub' || $loc eq '/pubh') {
        push @q, qarg('topic', topics_text(0)) if chance(0.95);
        push @q, qarg('event', chance(0.6) ? pick(@EVENTS) : chance(0.5) ? 'e' x (100 + int rand 60) : rnd_bytes(rnd_len())) if chance(0.4);
    } elsif ($loc eq '/to-user') {
        push @q, qarg('user', chance(0.6) ? join(',', map { pick(@USERS) } 1 .. 1 + int rand 3) : chance(0.3) ? ',' x (1 + int rand 50) : rnd_bytes(rnd_len())) if chance(0.95);
        push @q, qarg('event', pick(@EVENTS)) if chance(0.2);
    } elsif ($loc eq '/to-client') {
        my @ids = (keys %client_ids);
        push @q, qarg('id', chance(0.6) && @ids ? join(',', map { $ids[int rand @ids] } 1 .. 1 + int rand 3) : id_value()) if chance(0.95);
    } elsif ($loc eq '/stats') {
        push @q, qarg('channels', chance(0.3) ? 'all' : topics_text(1)) if chance(0.5);
        push @q, qarg('format', pick('json', 'prometheus', 'xml', '', 'JSON', rnd_bytes(rnd_len()))) if chance(0.4);
    } elsif ($loc eq '/clients') {
        my @ids = (keys %client_ids);
        push @q, qarg('id', chance(0.5) && @ids ? $ids[int rand @ids] : id_value()) if chance(0.3);
        push @q, qarg('user', chance(0.7) ? pick(@USERS) : rnd_bytes(rnd_len())) if chance(0.3);
        push @q, qarg('channel', chance(0.7) ? pick(@POOL, @PATTERNS) : rnd_bytes(rnd_len())) if chance(0.3);
        push @q, qarg('limit', pick('0', '1', '2', '1000', '1001', '-1', 'x', '99999999999999999999')) if chance(0.3);
        push @q, qarg('after', id_value()) if chance(0.2);
    }
    push @q, qarg(rnd_bytes(1 + int rand 6), rnd_bytes(rnd_len())) if chance(0.15);
    @q = (@q, @q) if chance(0.05);    # every argument twice
    return '' unless @q || chance(0.1);
    return '?' . join('&', @q);
}

sub body_text {
    my ($batch) = @_;
    if ($batch) {
        my $b = '';
        my $n = chance(0.1) ? 200 + int rand 800 : 1 + int rand 5;
        for (1 .. $n) {
            my @f;
            push @f, 'event: ' . (chance(0.8) ? pick(@EVENTS) : rnd_bytes(rnd_len())) if chance(0.5);
            push @f, 'data: ' . (chance(0.8) ? "d$_" : rnd_bytes(rnd_len())) for 1 .. 1 + int rand 3;
            push @f, pick('id: 5', 'retry: 10', 'foo: bar', ': comment', 'data', 'event:', "data:\xff") if chance(0.08);
            $b .= join(pick("\n", "\n", "\r\n", "\r"), @f) . pick("\n\n", "\n\n", "\n\n", "\r\n\r\n", "\n", '');
        }
        return $b;
    }
    my $r = rand;
    return '' if $r < 0.15;
    return "hello\nworld" if $r < 0.3;
    return '{"k":' . ('1' x rnd_len()) . '}' if $r < 0.45;
    return 'x' x (200_000 + int rand 100_000) if $r < 0.48;    # around client_max_body_size
    return "a\r\nb\rc\n\n\nd" if $r < 0.55;
    return rnd_bytes(chance(0.9) ? rnd_len() : 20_000 + int rand 40_000);
}

sub header_lines {
    my ($loc, $method, $has_body) = @_;
    my @h;
    push @h, ['X-User', chance(0.7) ? pick(@USERS) : chance(0.3) ? 'u' x (250 + int rand 20) : rnd_bytes(rnd_len())] if chance(0.4);
    push @h, ['X-Key', pick('k1', 'k2', '', 'k' . int rand 100)] if chance(0.4);
    # Never an allow pattern that would let a prefix pattern cover the history channels (see cleanup).
    push @h, ['X-Allow', pick('hist.a', 'r1', 'blog.*', 'x*', '', 'u.a', rnd_bytes(rnd_len()) =~ tr/*//dr)] if chance(0.3);
    push @h, ['Last-Event-ID', id_value()] if chance($loc =~ m{^/(resume|events|plain)$} ? 0.35 : 0.05);
    push @h, ['X-SSE-Event', chance(0.6) ? pick(@EVENTS) : chance(0.3) ? 'n' x (120 + int rand 20) : rnd_bytes(rnd_len())] if chance(0.3);
    push @h, ['Accept', pick('text/event-stream', 'text/plain', 'application/openmetrics-text;version=1.0.0', '*/*', rnd_bytes(rnd_len()))] if chance(0.3);
    push @h, ['Content-Type', chance(0.8) ? 'text/event-stream' : pick('application/json', 'text/event-stream; charset=utf-8', 'TEXT/EVENT-STREAM', rnd_bytes(rnd_len()))] if $has_body && chance(0.4);
    push @h, [rnd_bytes(1 + int rand 12), rnd_bytes(rnd_len())] if chance(0.1);
    push @h, ['X-Big', 'b' x (7000 + int rand 3000)] if chance(0.02);
    return @h;
}

# Requests that could touch the control streams are not sent: their channel, and their client ids
# (numbered in the same range as event ids, so an id_value() taken from a publish's answer, or one
# next to it, can be a control stream's: a DELETE /clients?id= of it would end that stream).
sub excluded {
    my ($bytes) = @_;
    (my $d = $bytes) =~ s/%([0-9A-Fa-f]{2})/chr hex $1/ge;
    return 1 if $bytes =~ /ctl/i || $d =~ /ctl/i;
    return scalar grep { index($bytes, $_) >= 0 || index($d, $_) >= 0 } keys %control_ids;
}

my @H1_LOCS = ('/events', '/events', '/events', '/plain', '/resume', '/resume', '/pub', '/pub', '/pub', '/pubh',
               '/to-user', '/to-client', '/stats', '/stats', '/clients', '/clients', '/nowhere');
sub is_stream_loc { return $_[0] =~ m{^/(events|plain|resume)$} }

sub rnd_method {
    my ($loc) = @_;
    my $r = rand;
    if (is_stream_loc($loc)) {
        return $r < 0.8 ? 'GET' : $r < 0.87 ? 'HEAD' : $r < 0.95 ? pick('POST', 'DELETE', 'OPTIONS', 'PUT') : pick('get', 'G ET', "GE\0T", 'X' x 40, 'PATCH');
    }
    if ($loc =~ m{^/(pub|pubh|to-user|to-client)$}) {
        return $r < 0.65 ? 'POST' : $r < 0.72 ? 'PUT' : $r < 0.82 ? 'GET' : $r < 0.9 ? 'DELETE' : pick('HEAD', 'OPTIONS', 'PATCH', 'post', "P\x01ST", 'TRACE');
    }
    if ($loc eq '/clients') { return $r < 0.6 ? 'GET' : $r < 0.85 ? 'DELETE' : pick('POST', 'HEAD', 'PUT') }
    return $r < 0.8 ? 'GET' : pick('HEAD', 'POST', 'DELETE', 'PROPFIND');
}

sub rnd_path {
    my ($loc) = @_;
    return $loc if chance(0.94);
    return pick("$loc/", "/x/..$loc", "/$loc", "$loc%00", "$loc\0", '*', '', "$loc#frag", "http://localhost$loc", uc $loc);
}

# ---------------------------------------------------------------- HTTP/1.x jobs
# One request's bytes and what to expect of it. Returns (bytes, expectations).
sub h1_request {
    my (%o) = @_;    # last: this request ends the connection's requests
    my $loc = pick(@H1_LOCS);
    my $method = rnd_method($loc);
    my $has_body = $method =~ /^(POST|PUT|DELETE|PATCH)$/i ? (chance(0.85)) : chance(0.05);
    my @h = header_lines($loc, $method, $has_body);
    my $batch = grep { $_->[0] eq 'Content-Type' && $_->[1] =~ /event-stream/i } @h;
    my $body = $has_body ? body_text($batch) : '';
    my $ver = $o{version};
    my $line = $method . ' ' . rnd_path($loc) . query_for($loc) . ($ver eq '0.9' ? '' : " HTTP/$ver");
    $line = rnd_bytes(rnd_len()) if chance(0.01);
    my $req = "$line\r\n";
    my $host = chance(0.95) ? "Host: localhost\r\n" : chance(0.5) ? "Host: localhost\r\nHost: other\r\n" : chance(0.5) ? "Host: \r\n" : '';
    $req .= $host if $ver ne '0.9';
    my $close = $o{close};
    if ($ver ne '0.9') {
        $req .= "$_->[0]: $_->[1]\r\n" for @h;
        $req .= $close ? "Connection: close\r\n" : ($ver eq '1.0' ? "Connection: keep-alive\r\n" : (chance(0.3) ? "Connection: keep-alive\r\n" : ''));
    }
    my $truncated = 0;
    my $mode = 'cl';
    if ($ver ne '0.9' && ($has_body || chance(0.03))) {
        my $r = rand;
        if ($r < 0.6) { $req .= 'Content-Length: ' . length($body) . "\r\n\r\n$body" }
        elsif ($r < 0.8 && $ver eq '1.1' && !$ENV{SSE_RANDOM_NO_CHUNKED}) {
            $mode = 'chunked';
            $req .= "Transfer-Encoding: chunked\r\n\r\n";
            my $rest = $body;
            while (length $rest) {
                my $n = 1 + int rand(length $rest > 5000 ? 5000 : length $rest);
                my $c = substr($rest, 0, $n, '');
                $req .= sprintf(pick('%x', '%X', '%08x'), $n) . (chance(0.05) ? ';ext=1' : '') . "\r\n$c\r\n";
            }
            if (chance(0.06)) { $truncated = 1 }                            # no last chunk
            elsif (chance(0.05)) { $req .= "zz\r\n" }                       # bad chunk size
            elsif (chance(0.03)) { $req .= "ffffffffffffffffff\r\n" }    # huge chunk
            else { $req .= "0\r\n" . (chance(0.1) ? "X-Trailer: 1\r\n" : '') . "\r\n" }
        }
        elsif ($r < 0.86) { $req .= 'Content-Length: ' . (length($body) + 1 + int rand 100) . "\r\n\r\n$body"; $truncated = 1 }
        elsif ($r < 0.9) { $req .= 'Content-Length: ' . int(length($body) / 2) . "\r\n\r\n$body"; $mode = 'short' }
        elsif ($r < 0.93) { $req .= 'Content-Length: ' . pick('-1', 'abc', '99999999999999999999', '1 2', '0x10', '') . "\r\n\r\n$body" }
        elsif ($r < 0.96) { $req .= 'Content-Length: ' . length($body) . "\r\nContent-Length: " . (length($body) + 1) . "\r\n\r\n$body" }
        else { $req .= 'Content-Length: ' . length($body) . "\r\nTransfer-Encoding: chunked\r\n\r\n$body" }
    } else {
        $req .= "\r\n";
    }
    my $stream = is_stream_loc($loc) && $method eq 'GET';
    return ($req, {loc => $loc, method => $method, stream => $stream, truncated => $truncated, mode => $mode});
}

my $next_id = 0;
my (@jobs, %by_fd);
my %count = (requests => 0, h1 => 0, h2 => 0, h2streams => 0, streams => 0, truncated => 0, pipelined => 0);
my @failures;

sub fail_job {
    my ($j, $why) = @_;
    push @failures, "#$j->{id} ($j->{proto}) $why; request: " . esc($j->{sent_all} // '') . ' ; got: ' . esc(substr($j->{in} // '', 0, 300));
}

sub connect_nb {
    my ($port, %o) = @_;
    my $s = IO::Socket::INET->new(Proto => 'tcp') or die "socket: $!";
    $s->setsockopt(SOL_SOCKET, SO_RCVBUF, $o{rcvbuf}) if $o{rcvbuf};
    $s->blocking(0);
    connect($s, Socket::pack_sockaddr_in($port, Socket::inet_aton('127.0.0.1')));
    return $s;
}

sub new_h1_job {
    my $id = ++$next_id;
    my $ver = pick('1.1', '1.1', '1.1', '1.1', '1.0', '1.0', '0.9', '1.1');
    $ver = '1.1' if $ver eq '0.9' && chance(0.7);
    my $nreq = chance(0.15) && $ver ne '0.9' ? 2 + int rand 4 : 1;
    my $keep = chance(0.3);    # the last request leaves the connection open (we close it)
    my (@parts, @info);
    for my $i (1 .. $nreq) {
        my ($bytes, $info) = h1_request(version => $ver, close => ($i == $nreq && !$keep));
        push @parts, $bytes;
        push @info, $info;
        last if $info->{truncated};
    }
    my $all = join '', @parts;
    return undef if excluded($all);
    my $stream = grep { $_->{stream} } @info;
    my $truncated = grep { $_->{truncated} } @info;
    # The bytes are written in one go (pipelining when several), or split at random places with pauses.
    my @out;
    if (chance(0.25)) {
        my $rest = $all;
        while (length $rest) {
            my $n = 1 + int rand(length $rest);
            push @out, [substr($rest, 0, $n, ''), rand() < 0.5 ? 0 : rand 0.3];
        }
    } else {
        @out = ([$all, 0]);
    }
    # Truncated: the last part of the bytes never comes (the request line, the head or the body).
    if (!$truncated && chance(0.04)) {
        my $cut = int rand length $all;
        @out = ([substr($all, 0, $cut), 0]);
        $truncated = 1;
        $all = substr($all, 0, $cut);
    }
    my $j = {id => $id, proto => "HTTP/$ver" . ($nreq > 1 ? " x$nreq" : ''), kind => 'h1', out => \@out, next_write => 0,
             in => '', inlen => 0, t0 => time, stream => $stream, truncated => $truncated, keep => $keep,
             nreq => scalar @parts, sent_all => $all, info => \@info};
    $j->{sock} = connect_nb($P1, rcvbuf => ($stream && chance(0.1)) ? 2048 : 0);
    $j->{noread} = $stream && chance(0.1);    # a stream that reads nothing (slow subscriber)
    # Streams and open connections are closed by us at a random moment: at once, after the first
    # bytes, or after reading a while (mid-response).
    $j->{close_after} = pick(0, 0.05, 0.2, 0.5, 1, 2, 3) if $stream || $keep || $truncated;
    $j->{close_after} = 0 if $truncated && chance(0.3);
    $j->{wait_server_close} = $truncated && !$stream && chance(0.5);    # see that the server closes it itself
    $count{requests} += $j->{nreq};
    $count{h1}++;
    $count{streams} += $stream ? 1 : 0;
    $count{truncated} += $truncated ? 1 : 0;
    $count{pipelined} += $nreq > 1 ? 1 : 0;
    logreq($id, $j->{proto}, $all);
    return $j;
}

# ---------------------------------------------------------------- HTTP/2 jobs
my @H2_LOCS = @H1_LOCS;
sub h2_headers {
    my ($loc, $method) = @_;
    my @h = ([':method', $method], [':scheme', 'http'], [':path', rnd_path($loc) . query_for($loc)], [':authority', 'localhost']);
    if (chance(0.05)) { my $r = rand; if ($r < 0.3) { splice @h, 2, 1 } elsif ($r < 0.5) { push @h, [':method', 'GET'] }
                        elsif ($r < 0.7) { push @h, [':bogus', 'x'] } elsif ($r < 0.85) { push @h, ['Upper', 'x'] } else { unshift @h, ['x', 'y'] } }
    push @h, map { [lc $_->[0], $_->[1]] } header_lines($loc, $method, 1);
    push @h, ['connection', 'keep-alive'] if chance(0.02);
    push @h, ['te', pick('trailers', 'gzip')] if chance(0.02);
    return @h;
}

sub new_h2_job {
    my $id = ++$next_id;
    my $n = 1 + int rand 8;
    my $out = H2::preface();
    my $cut_preface = chance(0.01);
    $out = substr($out, 0, int rand length $out) if $cut_preface;
    my $stall = chance(0.1);
    $out .= H2::settings(chance(0.5) ? (4 => ($stall ? 0 : 65535 + int rand 1_000_000)) : (), chance(0.2) ? (5 => 16384 + int rand 100000) : (),
                         chance(0.05) ? (2 => 1) : (), chance(0.05) ? (3 => int rand 3) : ());
    my (%streams, @sent);
    my $sid = 1;
    my $trunc_any = 0;
    for my $i (1 .. $n) {
        my $loc = pick(@H2_LOCS);
        my $method = rnd_method($loc);
        $method = 'GET' if $method =~ /[^A-Z]/ && chance(0.5);
        my @h = h2_headers($loc, $method);
        my $batch = grep { $_->[0] eq 'content-type' && $_->[1] =~ /event-stream/i } @h;
        my $has_body = $method =~ /^(POST|PUT|DELETE|PATCH)$/ ? chance(0.85) : chance(0.03);
        my $body = $has_body ? body_text($batch) : '';
        my $cl = chance(0.5);
        push @h, ['content-length', chance(0.85) ? length($body) : pick(length($body) + 5, 0, 'x', -1)] if $has_body && $cl;
        my $block = H2::hpack(@h);
        my $end_stream = $has_body ? 0 : 1;
        my $truncated = 0;
        if (chance(0.1) && length $block > 4) {    # HEADERS + CONTINUATION
            my $cut = 1 + int rand(length($block) - 1);
            $out .= H2::frame(1, $end_stream, $sid, substr($block, 0, $cut)) . H2::frame(9, 0x4, $sid, substr($block, $cut));
        } else {
            $out .= H2::frame(1, 0x4 | $end_stream, $sid, $block);
        }
        if ($has_body) {
            my $rest = $body;
            while (length $rest > 16384 || (length $rest && chance(0.3))) {
                $out .= H2::frame(0, 0, $sid, substr($rest, 0, 1 + int rand(length $rest > 16384 ? 16384 : length $rest), ''));
            }
            if (chance(0.05)) { $out .= H2::frame(0, 0, $sid, $rest) if length $rest; $truncated = 1 }    # no END_STREAM
            else { $out .= H2::frame(0, 1, $sid, $rest) }
        }
        my $stream = is_stream_loc($loc) && $method eq 'GET';
        $truncated ||= $cut_preface;
        $streams{$sid} = {loc => $loc, method => $method, stream => $stream, truncated => $truncated, sent_at => undef};
        $trunc_any ||= $truncated;
        if ($stream && chance(0.15)) { $out .= H2::frame(3, 0, $sid, pack('N', 8)); $streams{$sid}{reset_by_us} = 1 }    # cancel it at once
        $sid += 2;
        $sid += 2 * (1 + int rand 3) if chance(0.02);
    }
    # Now and then something a server must refuse: a frame on stream 0, an unknown frame type,
    # a WINDOW_UPDATE of 0, a PING of the wrong size, an odd RST_STREAM, an oversized frame.
    if (chance(0.12)) {
        $out .= pick(H2::frame(0, 1, 0, 'x'), H2::frame(0xfa, 0, 1, 'unknown'), H2::window_update(1, 0), H2::frame(6, 0, 0, 'short'),
                     H2::frame(3, 0, 0, pack('N', 0)), H2::frame(2, 0, 1, pack('NC', 1, 10)), H2::frame(1, 0x4, 2, H2::hpack([':method', 'GET'])),
                     H2::frame(0, 0, 1, 'y' x 20000), H2::window_update(0, 0x7fffffff), H2::frame(7, 0, 0, pack('NN', 0, 0)), rnd_bytes(rnd_len()));
    }
    return undef if excluded($out);
    my @w;
    if (chance(0.2)) { my $rest = $out; while (length $rest) { push @w, [substr($rest, 0, 1 + int rand(length $rest), ''), chance(0.5) ? 0 : rand 0.2] } }
    else { @w = ([$out, 0]) }
    my $j = {id => $id, proto => "HTTP/2 x$n", kind => 'h2', out => \@w, next_write => 0, in => '', inlen => 0, t0 => time,
             h2buf => '', streams => \%streams, stall => $stall, sent_all => $out, reply => ''};
    $j->{sock} = connect_nb($P2);
    my $has_stream = grep { $_->{stream} && !$_->{reset_by_us} } values %streams;
    $j->{close_after} = pick(0, 0.05, 0.3, 1, 2) if $has_stream || $stall || $trunc_any;
    $j->{stream} = $has_stream;
    $count{requests} += $n;
    $count{h2}++;
    $count{h2streams} += $n;
    logreq($id, $j->{proto}, $out);
    return $j;
}

# ---------------------------------------------------------------- the event loop
sub close_job {
    my ($j) = @_;
    return if $j->{closed};
    $j->{closed} = 1;
    if ($j->{sock}) {
        shutdown($j->{sock}, SHUT_WR) if chance(0.1);
        delete $by_fd{fileno $j->{sock}};
        close $j->{sock};
        $j->{sock} = undef;
    }
}

sub h1_done_reading {    # all responses of a connection that has an end came in full (for keep-alive)
    my ($j) = @_;
    my $buf = $j->{in};
    my $n = 0;
    while ($buf =~ /\A(HTTP\/1\.\d (\d+)[^\r\n]*\r\n(.*?)\r\n\r\n)/s) {
        my ($head, $hdrs, $status) = ($1, $3, $2);
        substr($buf, 0, length $head, '');
        my $info = $j->{info}[$n] or last;
        if ($info->{method} eq 'HEAD' || $status == 204 || $status == 304) { }
        elsif ($hdrs =~ /^content-length:\s*(\d+)/im) { return 0 if length $buf < $1; substr($buf, 0, $1, '') }
        elsif ($hdrs =~ /^transfer-encoding:\s*chunked/im) {
            while (1) {
                return 0 unless $buf =~ /\A([0-9a-fA-F]+)\r\n/;
                my $len = hex $1;
                return 0 if length $buf < length($1) + 2 + $len + 2;
                substr($buf, 0, length($1) + 2 + $len + 2, '');
                last if $len == 0;
            }
        } else { return 0 }
        $n++;
    }
    return $n >= $j->{nreq};
}

sub h2_input {
    my ($j) = @_;
    my @reply;
    for my $f (H2::parse(\$j->{h2buf})) {
        my ($type, $flags, $sid, $p) = @$f;
        my $st = $j->{streams}{$sid};
        if ($type == 4 && !($flags & 1)) { push @reply, H2::frame(4, 1, 0, '') }
        elsif ($type == 6 && !($flags & 1)) { push @reply, H2::frame(6, 1, 0, $p) }
        elsif ($type == 7) { $j->{goaway} = 1 }
        elsif ($st && $type == 1) { $st->{headers} = 1; $st->{done} = 1 if $flags & 1 }
        elsif ($st && $type == 0) {
            $st->{data} = ($st->{data} // 0) + length $p;
            $st->{done} = 1 if $flags & 1;
            push @reply, H2::window_update(0, length $p), H2::window_update($sid, length $p) if length $p && !$j->{stall} && !($flags & 1);
            # A stream that is not read on: cancel it at a random moment, the connection lives on.
            if ($st->{stream} && !$st->{reset_by_us} && chance(0.05)) { push @reply, H2::frame(3, 0, $sid, pack('N', 8)); $st->{reset_by_us} = 1 }
        }
        elsif ($st && $type == 3) { $st->{done} = 1; $st->{headers} = 1 }
    }
    if (@reply && $j->{sock}) { my $r = join '', @reply; syswrite($j->{sock}, $r) }
}

sub h2_all_done {
    my ($j) = @_;
    return 1 if $j->{goaway} || $j->{eof};
    for my $st (values %{ $j->{streams} }) {
        next if $st->{reset_by_us} || $st->{truncated};
        return 0 unless $st->{done} || ($st->{stream} && $st->{headers});
    }
    return 1;
}

# Checks one job's deadlines and decides whether to close it. True when the job is finished.
sub step_job {
    my ($j, $now) = @_;
    return 1 if $j->{closed};
    my $written = !@{ $j->{out} };
    $j->{written_at} //= $now if $written;
    if ($j->{eof}) {
        close_job($j);
        return 1;
    }
    # Our own moment to close: after close_after seconds of reading (from the first byte, or from
    # the end of writing for requests that are never complete).
    if (defined $j->{close_after} && !$j->{wait_server_close}) {
        my $from = $j->{first_byte_at} // (($j->{truncated} || $j->{stall} || $j->{noread}) ? $j->{written_at} : undef);
        $from = $j->{written_at} if $j->{close_after} == 0 && $written;
        if (defined $from && $now - $from >= $j->{close_after}) {
            if ($j->{kind} eq 'h2' && !h2_all_done($j) && $now - ($j->{written_at} // $now) < $T_END && !$j->{stall}) {
                # Answers still owed on other streams of this connection: wait for them first.
            } else {
                close_job($j);
                return 1;
            }
        }
    }
    return 0 unless $written;
    my $age = $now - $j->{written_at};
    if ($j->{kind} eq 'h1') {
        if (!$j->{truncated} && !defined $j->{first_byte_at} && $age > $T_FIRST && !$j->{noread}) {
            fail_job($j, "no response byte and no close within ${T_FIRST}s");
            close_job($j);
            return 1;
        }
        if ($j->{truncated} && $j->{wait_server_close} && $age > $T_END) {
            fail_job($j, "a truncated request was not closed by the server within ${T_END}s (client_header_timeout/client_body_timeout 2s)");
            close_job($j);
            return 1;
        }
        if (!$j->{stream} && !$j->{truncated}) {
            if ($j->{keep} && h1_done_reading($j)) { close_job($j); return 1 }
            if ($age > $T_END) {
                # A connection asked to close that is still open, or a keep-alive one whose answers never completed.
                fail_job($j, "the response did not end within ${T_END}s");
                close_job($j);
                return 1;
            }
        }
    } else {
        if (h2_all_done($j) && !$j->{stream}) { close_job($j); return 1 }
        if (!$j->{stall} && $age > $T_END && !h2_all_done($j)) {
            my @owed = grep { my $s = $j->{streams}{$_}; !$s->{reset_by_us} && !$s->{truncated} && !$s->{done} && !($s->{stream} && $s->{headers}) } sort { $a <=> $b } keys %{ $j->{streams} };
            fail_job($j, "HTTP/2 streams @owed got no answer within ${T_END}s");
            close_job($j);
            return 1;
        }
    }
    return 0;
}

# ---------------------------------------------------------------- control streams and baseline
my $idle = $t->stats;
my $c1 = $t->subscribe('/ctl', headers => {});
is($c1->status, 200, 'control stream 1 (HTTP/1.1): 200');
my $c2 = H2Stream->new($P2, '/ctl');
SSETest::wait_until(sub { $c2->fill; defined $c2->{status} && length $c2->{body} >= 5 }, 5);
is($c2->{status}, 200, 'control stream 2 (HTTP/2): 200');
my $base = $t->stats_until({subscribers => 2, channels => 1}, 5);
is_deeply([@$base{qw(subscribers channels users)}], [2, 1, 0], 'baseline: 2 control streams, 1 channel, no user');
my $ctl_list = $t->get_json('/clients?channel=ctl.main');
$control_ids{$_->{client_id}} = 1 for @{ $ctl_list->{clients} };
is(scalar keys %control_ids, 2, 'the control streams are listed');
diag(sprintf 'baseline: zone_bytes_used %d, events_stored %d, workers %s', $base->{zone_bytes_used}, $base->{events_stored},
     join(',', map { "$_->{pid}:$_->{subscribers}" } @{ $base->{workers} }));

my $NCTL = 100;
my @ctl_events;    # [id, frame]
sub publish_control {
    my ($i) = @_;
    my $data = pick("control $i", "control $i\nsecond line", "{\"n\":$i,\"s\":\"\x{e2}\x{82}\x{ac}\"}", "control $i\n\nafter a blank line", "c$i " . ('z' x (1 + int rand 3000)));
    my $name = chance(0.5) ? "ctl.ev$i" : undef;
    my %h = ('Content-Type' => 'text/plain');
    $h{'X-SSE-Event'} = $name if defined $name && chance(0.5);
    my $path = '/ctlpub' . (defined $name && !$h{'X-SSE-Event'} ? "?event=$name" : '');
    my $r = $t->request('POST', $path, body => $data, headers => \%h, timeout => $T_END);
    if ($r->{status} != 202) {
        push @failures, "control publish $i: status $r->{status} $r->{body}";
        return;
    }
    my $id = decode_json($r->{body})->{id};
    push @seen_ids, $id;
    push @ctl_events, [$id, frame($id, $data, $name)];
}

my $ctl_sel_fds = sub { grep { defined } ($c1->{sock}, $c2->{sock}) };

# The random phase.
my $t_start = time;
my $started = 0;
my $ctl_sent = 0;
my $stats_every = 0;
while (1) {
    my $now = time;
    my $stop = $started >= $N || $now - $t_start > $HARD_LIMIT;
    last if $stop && !@jobs;
    # Spread control events 1 .. NCTL-1 over the random phase; the last one comes after it.
    while ($ctl_sent < $NCTL - 1 && $ctl_sent < ($NCTL - 1) * $count{requests} / $N) { publish_control(++$ctl_sent) }
    while (!$stop && @jobs < $MAXC) {
        my $j = (chance(0.3) ? $H2_OK : !$H1_OK) ? new_h2_job() : new_h1_job();
        next unless $j;
        $started += $j->{kind} eq 'h2' ? scalar(keys %{ $j->{streams} }) : $j->{nreq};
        push @jobs, $j;
        $by_fd{fileno $j->{sock}} = $j;
        $stop = $started >= $N;
    }
    my $rs = IO::Select->new(map { $_->{sock} } grep { $_->{sock} && !$_->{noread} } @jobs);
    $rs->add($c1->{sock}, $c2->{sock});
    my $ws = IO::Select->new(map { $_->{sock} } grep { $_->{sock} && @{ $_->{out} } && $_->{next_write} <= $now } @jobs);
    my ($r, $w) = IO::Select->select($rs, $ws, undef, 0.02);
    for my $fh (@{ $w || [] }) {
        my $j = $by_fd{fileno $fh} or next;
        my $seg = $j->{out}[0];
        my $n = syswrite($fh, $seg->[0]);
        if (!defined $n) {
            next if $!{EAGAIN} || $!{EINPROGRESS};
            $j->{out} = [];    # the server closed it while we wrote: that is an answer too
            $j->{eof} = 1;
            $j->{written_at} = time;
            next;
        }
        substr($seg->[0], 0, $n, '');
        next if length $seg->[0];
        shift @{ $j->{out} };
        $j->{next_write} = time + $seg->[1];
    }
    for my $fh (@{ $r || [] }) {
        if ($c1->{sock} && $fh == $c1->{sock}) { $c1->_fill(0); next }
        if ($c2->{sock} && $fh == $c2->{sock}) { $c2->fill; next }
        my $j = $by_fd{fileno $fh} or next;
        my $n = sysread($fh, my $chunk, 65536);
        if (!defined $n) { next if $!{EAGAIN}; $j->{eof} = 1; next }
        if ($n == 0) { $j->{eof} = 1; next }
        $j->{first_byte_at} //= time;
        $j->{inlen} += $n;
        $j->{in} .= $chunk if length $j->{in} < 200_000;
        if ($j->{kind} eq 'h2') { $j->{h2buf} .= $chunk; h2_input($j) }
        elsif ($j->{info}[0]{loc} eq '/events' && $chunk =~ /"client_id":"(\d+)"/) {
            $client_ids{$1} = 1 unless $control_ids{$1};
        }
    }
    $now = time;
    @jobs = grep { !step_job($_, $now) } @jobs;
    # Now and then a full stats and clients listing while all of this goes on.
    if (++$stats_every % 400 == 0) {
        my $st = eval { $t->request('GET', '/stats?channels=all', timeout => $T_END) };
        push @failures, 'GET /stats?channels=all during the random phase: ' . ($st ? $st->{status} : $@) unless $st && $st->{status} == 200;
    }
}
my $elapsed = time - $t_start;
diag(sprintf 'random phase: %d requests (%d HTTP/1.x connections, %d HTTP/2 connections with %d streams; %d streams opened, '
           . '%d truncated, %d pipelined) in %.1f s', $count{requests}, $count{h1}, $count{h2}, $count{h2streams},
     $count{streams}, $count{truncated}, $count{pipelined}, $elapsed);
cmp_ok($count{requests}, '>=', $N > 3000 ? 3000 : $N, "at least " . ($N > 3000 ? 3000 : $N) . " random requests were sent")
    or diag("the random phase hit its time limit of ${HARD_LIMIT}s");
is(scalar @failures, 0, 'every request was answered or closed in time') or diag(join "\n", @failures[0 .. ($#failures < 19 ? $#failures : 19)]);

# The server still answers at once.
my $t0 = time;
my $ping = $t->request('GET', '/stats', timeout => 5);
is($ping->{status}, 200, 'a plain request after the random phase is answered');
cmp_ok(time - $t0, '<', 2, '... quickly');
is_deeply([$t->worker_pids], \@workers0, 'no worker died or was replaced');

# The last control event, after the random phase; then both control streams hold exactly the sequence.
publish_control($NCTL);
is(scalar @ctl_events, $NCTL, "all $NCTL control events were published");
my $want = join '', map { $_->[1] } @ctl_events;

sub sse_events_only {    # the body without comment-only blocks (":ok", heartbeats): the event frames
    my ($body) = @_;
    my @blocks = split /(?<=\n\n)/, $body;
    return join '', grep { !/\A(?::[^\n]*\n)+\n\z/ } @blocks;
}
my $last_id = $ctl_events[-1][0];
SSETest::wait_until(sub {
    $c1->_fill(0.01);
    $c2->fill;
    index($c1->body, "id: $last_id\n") >= 0 && index($c2->{body}, "id: $last_id\n") >= 0;
}, 10);
for my $c (['control stream 1 (HTTP/1.1)', $c1->body, $c1->eof], ['control stream 2 (HTTP/2)', $c2->{body}, $c2->{eof} || $c2->{reset} || $c2->{goaway}]) {
    my ($name, $body, $ended) = @$c;
    ok(!$ended, "$name is still open");
    like($body, qr/\A:ok\n\n/, "$name opened with :ok");
    my $got = sse_events_only($body);
    my $ok = is($got eq $want ? 'exact' : 'differs', 'exact', "$name received exactly the $NCTL control events, in order, nothing else");
    if (!$ok) {
        my @g = split /(?<=\n\n)/, $got;
        my @w = map { $_->[1] } @ctl_events;
        diag(first_difference(\@g, \@w, sub { esc($_[0]) }));
    }
}

# Back to the baseline: nothing but the control streams; the history channels deleted first.
# (Known to fail when written: the last event delivered stays in the zone, counted in
# events_stored and zone_bytes_used, until the next publish or unsubscribe collects it.)
my $del = $t->request('DELETE', '/pubh');
ok($del->{status} == 200 || $del->{status} == 404, 'DELETE of the history channels') or diag("$del->{status} $del->{body}");
my $st;
SSETest::wait_until(sub {
    $st = $t->stats;
    $st->{subscribers} == 2 && $st->{channels} == 1 && $st->{users} == 0 && $st->{zone_bytes_used} == $base->{zone_bytes_used}
        && $st->{events_stored} == $base->{events_stored};
}, 8);
is($st->{subscribers}, 2, 'after the random phase: subscribers back to the 2 control streams');
is($st->{channels}, 1, 'after the random phase: channels back to 1') or do {
    my $all = $t->get_json('/stats?channels=all');
    diag('channels left: ' . join ', ', map { "$_->{channel} (subscribers $_->{subscribers}, retained $_->{retained})" } @{ $all->{per_channel} });
};
is($st->{users}, 0, 'after the random phase: users back to 0');
is($st->{events_stored}, $base->{events_stored}, 'after the random phase: events_stored back to the baseline');
is($st->{zone_bytes_used}, $base->{zone_bytes_used}, 'after the random phase: zone_bytes_used back to the baseline')
    or diag(sprintf 'zone_bytes_used %d, baseline %d (difference %d)', $st->{zone_bytes_used}, $base->{zone_bytes_used},
                    $st->{zone_bytes_used} - $base->{zone_bytes_used});
my $cl = $t->get_json('/clients?limit=1000');
is($cl->{total}, 2, 'sse_clients lists the 2 control streams only');

# Then without the control streams: the zone is as empty as before anything (this also tells a
# leak from an event that is only collected late, at the next publish or unsubscribe).
$c1->close;
close $c2->{sock};
SSETest::wait_until(sub {
    $st = $t->stats;
    $st->{subscribers} == 0 && $st->{channels} == 0 && $st->{events_stored} == 0 && $st->{zone_bytes_used} == $idle->{zone_bytes_used};
}, 8);
is_deeply({map { $_ => $st->{$_} } qw(subscribers channels users events_stored zone_bytes_used)},
          {subscribers => 0, channels => 0, users => 0, events_stored => 0, zone_bytes_used => $idle->{zone_bytes_used}},
          'once the control streams are gone too, the zone is back to its idle figures');
close $LOG;
$t->finish;
done_testing;
