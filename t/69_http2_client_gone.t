# Clients that go away while nginx still holds bytes for their stream: they stopped reading, the
# TCP buffers are full, and HTTP/2 DATA frames wait in the connection's output queue or for the
# stream's window. nginx then ends a queued HTTP/2 stream through its write handler, not its read
# handler (stream->queued in ngx_http_v2_finalize_connection), with the connection in error and
# nothing new to write; the module must end the stream there too, and release what it pinned.
# Each way of going away: close with unread data (RST), and SHUT_WR (FIN) with the socket left
# open and unread; a quiet stream on the same HTTP/2 connection, and an HTTP/1.1 stream in the
# same state, beside them. And the rare t/51 failure this test was written to find (a stream left
# registered after the random phase): a stream request whose body came after its headers, which
# is now refused with 400 (HTTP/1.1 by length or chunked, HTTP/2 with DATA).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(sleep time);
use IO::Socket::INET;
use IO::Select;
use Socket qw(SOL_SOCKET SO_RCVBUF SHUT_WR);
use SSETest;
use SSEH2;

my $locations = <<'CONF';
        location = /events {
            sse_subscribe $arg_topics;
            sse_heartbeat off;
            sse_send_buffer 4m;  # never dropped as too slow: only the client's going away ends it
        }
        location = /pub {
            sse_publish $arg_topic;
            sse_history 0;  # the zone must return to its baseline
        }
        location = /stats {
            sse_stats;
        }
CONF
my $t = SSETest->new(extra_ports => 1, server => $locations, http => <<"CONF")->start;
    server {
        listen 127.0.0.1:%%PORT1%% http2 sndbuf=4k;
$locations
    }
CONF
END { local $?; $t->stop if $t }

my $baseline = $t->stats->{zone_bytes_used};
my $event = 'x' x 1000;

# Publishes until nginx has DATA frames it cannot write: 1 KB events, 200 KB in all (far above
# the 4 KB send and receive buffers, below the 4 MB sse_send_buffer and, per stream, within the
# default 64 KB HTTP/2 window only for the first 60 or so: the rest wait for the window, which
# is the other way nginx holds a stream).
sub fill {
    my ($topic, $n) = @_;
    for (1 .. $n) {
        my $r = $t->request('POST', "/pub?topic=$topic", body => $event);
        die "publish: $r->{status}" unless $r->{status} == 202;
    }
}

sub h2_stream {
    my ($topic) = @_;
    my $c = SSEH2->new(port => $t->port(1), rcvbuf => 4096);
    my $sid = $c->get("/events?topics=$topic");
    $c->read_for(0.3);
    return ($c, $sid);
}

for my $how ('close', 'shut_wr') {
    my $topic = "gone_$how";
    my ($c, $sid) = h2_stream($topic);
    is($c->status($sid), 200, "$how: the HTTP/2 stream opened");
    # A second stream of the same connection, on a channel that gets nothing: not queued.
    my $quiet = $c->get("/events?topics=${topic}_quiet");
    $c->read_for(0.3);
    is($c->status($quiet), 200, "$how: a quiet stream on the same connection opened");
    my $st = $t->stats_until({subscribers => 2}, 5);
    is($st->{subscribers}, 2, "$how: two streams");

    fill($topic, 200);
    sleep 0.3;
    $st = $t->stats;
    is($st->{subscribers}, 2, "$how: the stream that stopped reading is still open (not dropped as slow)");

    if ($how eq 'close') {
        $c->close;
    } else {
        shutdown($c->{sock}, SHUT_WR) or die "shutdown: $!";
    }
    $st = $t->stats_until({subscribers => 0, channels => 0, zone_bytes_used => $baseline}, 10);
    is_deeply([@$st{qw(subscribers channels zone_bytes_used)}], [0, 0, $baseline],
              "$how: both streams ended once the client went away; the zone is back to its baseline");
    $c->close;
}

# The same for HTTP/1.1: a stream whose client stopped reading, then closes.
{
    my $sock = IO::Socket::INET->new(Proto => 'tcp') or die "socket: $!";
    $sock->setsockopt(SOL_SOCKET, SO_RCVBUF, 4096) or die "setsockopt: $!";
    $sock->connect(pack_sockaddr_in($t->port, inet_aton('127.0.0.1'))) or die "connect: $!";
    print $sock "GET /events?topics=gone_h1 HTTP/1.1\r\nHost: localhost\r\n\r\n";
    my $st = $t->stats_until({subscribers => 1}, 5);
    is($st->{subscribers}, 1, 'HTTP/1.1: the stream opened');
    fill('gone_h1', 200);
    close $sock;
    $st = $t->stats_until({subscribers => 0, channels => 0, zone_bytes_used => $baseline}, 10);
    is_deeply([@$st{qw(subscribers channels zone_bytes_used)}], [0, 0, $baseline],
              'HTTP/1.1: the stream ended once the client closed; the zone is back to its baseline');
}

# A stream request with a body (EventSource sends none) is refused, whenever the body comes: while
# nginx drops a body that comes after the headers, the request's read handler is nginx's, and a
# stream opened meanwhile (heartbeat off) went unnoticed when its client went away: found by t/51
# (seed 799863848: GET /plain, Content-Length: 42, the body in a later segment).
sub raw_exchange {
    my ($head, $body) = @_;
    my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $t->port, Proto => 'tcp') or die "connect: $!";
    $sock->autoflush(1);
    print $sock $head;
    sleep 0.3;
    print $sock $body if defined $body;
    my $sel = IO::Select->new($sock);
    my $got = '';
    my $end = time + 2;
    while (time < $end && $sel->can_read($end - time)) {
        my $n = sysread($sock, my $buf, 65536);
        last unless $n;
        $got .= $buf;
        last if $got =~ /\r\n\r\n/ && $got !~ /^HTTP\/1\.1 200/ && $got =~ /\n\z/;
    }
    return ($sock, $got);
}
my $BODY_REFUSED = "an event stream request cannot have a body\n";
my $late_body = "event: a\ndata: d1\ndata: d2\ndata: d3\ndata\n\n";    # 42 bytes, as t/51 sent
for my $case (['Content-Length, the body later', 'Content-Length: ' . length($late_body) . "\r\n", $late_body],
              ['chunked, the body later', "Transfer-Encoding: chunked\r\n", "5\r\nhello\r\n0\r\n\r\n"],
              ['Content-Length, the body at once', "Content-Length: 5\r\n", undef, 'hello']) {
    my ($name, $header, $later, $now) = @$case;
    my ($sock, $got) = raw_exchange("GET /events?topics=body_a,body_b HTTP/1.1\r\nHost: localhost\r\n$header\r\n" . ($now // ''), $later);
    like($got, qr{\AHTTP/1\.1 400 }, "a stream request with a body ($name): 400");
    is((split /\r\n\r\n/, $got, 2)[1], $BODY_REFUSED, "$name: the reason");
    close $sock;
    my $st = $t->stats_until({subscribers => 0, channels => 0, zone_bytes_used => $baseline}, 5);
    is_deeply([@$st{qw(subscribers channels zone_bytes_used)}], [0, 0, $baseline], "$name: no stream, the zone at its baseline");
}
{
    my ($sock, $got) = raw_exchange("GET /events?topics=body_a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n");
    like($got, qr{\AHTTP/1\.1 200 }, 'Content-Length: 0 is no body: the stream opens');
    is($t->stats_until({subscribers => 1}, 5)->{subscribers}, 1, 'Content-Length: 0: one stream');
    close $sock;
    my $st = $t->stats_until({subscribers => 0, channels => 0, zone_bytes_used => $baseline}, 5);
    is_deeply([@$st{qw(subscribers channels zone_bytes_used)}], [0, 0, $baseline], 'Content-Length: 0: ended at the close');
}
{
    # HTTP/2: HEADERS without END_STREAM, then DATA: nginx marks such a request chunked.
    my $c = SSEH2->new(port => $t->port(1));
    my $block = SSEH2::literal(':method', 'GET') . SSEH2::literal(':scheme', 'http')
              . SSEH2::literal(':path', '/events?topics=body_a') . SSEH2::literal(':authority', 'localhost');
    $c->_write(SSEH2::frame(1, 0x4, 1, $block));
    $c->{streams}{1} = {data => '', status => undef, reset => undef, ended => 0};
    $c->_write(SSEH2::frame(0, 0x1, 1, 'hello'));
    $c->read_for(0.5);
    is($c->status(1), 'other', 'HTTP/2: a stream request with DATA is not answered 200');
    is($c->data(1), $BODY_REFUSED, 'HTTP/2: the reason');
    $c->close;
    my $st = $t->stats_until({subscribers => 0, channels => 0, zone_bytes_used => $baseline}, 5);
    is_deeply([@$st{qw(subscribers channels zone_bytes_used)}], [0, 0, $baseline], 'HTTP/2: no stream, the zone at its baseline');
}

my @bad = grep { /\[(alert|crit|emerg)\]/ } split /\n/, $t->error_log;
is(scalar @bad, 0, 'no alert, crit or emerg in error.log') or diag(join "\n", @bad[0 .. ($#bad < 9 ? $#bad : 9)]);
done_testing;
