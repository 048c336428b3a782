# A subscriber that never reads is disconnected once more than sse_send_buffer bytes wait for it
# (info log "sse: client too slow", slow_disconnects + 1); a subscriber on the same channel that
# reads gets every event, in order; the zone returns to its baseline afterwards.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(sleep time);
use Socket qw(PF_INET SOCK_STREAM SOL_SOCKET SO_RCVBUF IPPROTO_TCP pack_sockaddr_in inet_aton);
use IO::Select;
use SSETest;

# Streams use port 1, whose sockets have a fixed 64k send buffer: on loopback the kernel would
# otherwise grow a socket's send buffer up to tcp_wmem's maximum (4 MB), and hold the whole
# test's traffic without the module ever seeing an unsent byte.
my $locations = <<'CONF';
        location = /events {
            sse_subscribe $arg_topics;
            sse_heartbeat off;
            sse_send_buffer 64k;
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
        listen 127.0.0.1:%%PORT1%% sndbuf=64k;
$locations
    }
CONF

sub stats { $t->stats }
sub stats_until { $t->stats_until(@_) }

# A stream whose socket has a 4 KB receive buffer, set before connect, and that is never read.
sub slow_stream {
    my ($path) = @_;
    socket(my $sock, PF_INET, SOCK_STREAM, IPPROTO_TCP) or die "socket: $!";
    setsockopt($sock, SOL_SOCKET, SO_RCVBUF, pack('i', 4096)) or die "setsockopt: $!";
    connect($sock, pack_sockaddr_in($t->port(1), inet_aton('127.0.0.1'))) or die "connect: $!";
    my $req = "GET $path HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n";
    syswrite($sock, $req) == length $req or die "write: $!";
    return $sock;
}

# Reads a socket until EOF (or $timeout); returns (bytes, got_eof).
sub read_all {
    my ($sock, $timeout) = @_;
    my $sel = IO::Select->new($sock);
    my $buf = '';
    my $end = time + $timeout;
    while (time < $end) {
        next unless $sel->can_read(0.1);
        my $n = sysread($sock, $buf, 65536, length $buf);
        return ($buf, 1) if defined $n && $n == 0;
        return ($buf, 1) if !defined $n && !$!{EAGAIN} && !$!{EINTR};    # reset counts as closed
    }
    return ($buf, 0);
}

sub dechunk {
    my ($body) = @_;
    my $out = '';
    my $last = 0;
    while ($body =~ s/^([0-9a-fA-F]+)\r\n//) {
        my $n = hex $1;
        if ($n == 0) { $last = 1; last }
        last if length($body) < $n;
        $out .= substr($body, 0, $n, '');
        $body =~ s/^\r\n//;
    }
    return ($out, $last);
}

my $baseline = stats()->{zone_bytes_used};
my $st0 = stats();
is($st0->{slow_disconnects}, 0, 'no slow disconnect at start');

my $reader = $t->subscribe('/events?topics=slow', port => $t->port(1));
my $slow = slow_stream('/events?topics=slow');
my $st = stats_until({subscribers => 2});
is($st->{subscribers}, 2, 'two subscribers');
my $subs_before = $st->{subscribers};

my $N = 300;
my @pub;
my @reach;
my $disconnected_at;
for my $k (0 .. $N - 1) {
    my $data = sprintf('%04d:', $k) . ('abcdefgh' x 1000);    # 8005 bytes
    my $r = $t->publish('/pub?topic=slow', $data);
    push @pub, {id => $r->{id}, data => $data};
    push @reach, $r->{subscribers};
    # keep the reader up to date so that only the other one falls behind
    $reader->events($k + 1, 5);
    if (!defined $disconnected_at && $k % 10 == 9 && stats()->{slow_disconnects}) { $disconnected_at = $k }
}
diag('the slow subscriber was seen disconnected after event ' . ($disconnected_at // 'never'));
diag('publish answers reached: ' . join(',', map { "$_" } @reach[0 .. 4]) . ' ... ' . join(',', @reach[-5 .. -1]));

my @ev = $reader->events($N, 5);
is(scalar @ev, $N, "the reading subscriber received all $N events");
my $want = ":ok\n\n" . join('', map { "id: $_->{id}\ndata: $_->{data}\n\n" } @pub);
ok($reader->body eq $want, 'the reading subscriber received exactly the events, in order, byte for byte')
    or diag('got ' . length($reader->body) . ' bytes, want ' . length($want));

$st = stats_until({slow_disconnects => 1, subscribers => $subs_before - 1});
is($st->{slow_disconnects}, 1, '/stats slow_disconnects == 1');
is($st->{subscribers}, $subs_before - 1, 'subscribers dropped by exactly 1');
my @drops = grep { $reach[$_] != $reach[$_ - 1] } 1 .. $#reach;
is($reach[0], 2, 'the first publish reached 2 subscribers');
is($reach[-1], 1, 'the last publish reached 1 subscriber');
is(scalar @drops, 1, 'the count reached by publishes dropped once, from 2 to 1');

my @too_slow = grep { /\[info\].*sse: client too slow/ } split /\n/, $t->error_log;
is(scalar @too_slow, 1, 'error.log has exactly one [info] "sse: client too slow" line') or diag(join "\n", @too_slow);

# The slow socket: what the server had sent before closing it is a clean prefix of the stream.
my ($raw, $eof) = read_all($slow, 5);
ok($eof, 'the slow subscriber\'s connection was closed by the server (FIN within 5 s of reading)')
    or diag("no EOF after reading " . length($raw) . " bytes; server side of the connection:\n"
            . `ss -tn state all '( sport = :@{[$t->port(1)]} )' 2>&1`);
my ($head, $body) = split /\r\n\r\n/, $raw, 2;
like($head // '', qr{^HTTP/1\.1 200}, 'the slow subscriber had got a 200');
my ($decoded, $last) = dechunk($body // '');
ok(length($decoded) >= 5 && substr($want, 0, length $decoded) eq $decoded,
   'the slow subscriber\'s bytes are a prefix of the stream (nothing corrupted or reordered)')
    or diag('decoded ' . length($decoded) . ' bytes');
cmp_ok(length($decoded), '<', length($want), 'the slow subscriber did not get the whole stream');
ok(!$last, 'the slow subscriber\'s stream was cut, not ended with the zero chunk');
close $slow;

# The reader keeps receiving.
my $r = $t->publish('/pub?topic=slow', 'after');
is($r->{subscribers}, 1, 'a later publish reaches the reader only');
@ev = $reader->events($N + 1, 5);
is($ev[-1]{frame}, "id: $r->{id}\ndata: after\n\n", 'the reader receives later events');

$reader->close;
$st = stats_until({subscribers => 0, channels => 0, events_stored => 0, zone_bytes_used => $baseline});
if ($st->{zone_bytes_used} != $baseline || $st->{events_stored}) {
    $t->publish('/pub?topic=unrelated', 'x');
    $st = stats_until({subscribers => 0, channels => 0, events_stored => 0, zone_bytes_used => $baseline});
}
is_deeply([@$st{qw(subscribers channels events_stored zone_bytes_used)}], [0, 0, 0, $baseline],
          'everyone gone: subscribers, channels, events_stored 0 and zone_bytes_used back to the baseline');
is($st->{slow_disconnects}, 1, 'slow_disconnects still 1 (a normal close is not counted)');

$t->finish;
done_testing;
