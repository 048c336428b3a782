# A client that closes its sending side right after its request (a half-close: it still reads
# the headers), then goes away, must not leave its stream open. Its EOF reaches nginx while the
# request is being read, before the stream's read handler is set, and with edge-triggered epoll
# no other event comes: with sse_heartbeat off nothing would ever be written to find out.
# (Before the fix: 157 of 200 such streams stayed counted.)
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use IO::Socket::INET;
use Time::HiRes qw(sleep);
use SSETest;

my $t = SSETest->new(server => <<'CONF')->start;
        location = /events {
            sse_subscribe $arg_topics;
            sse_heartbeat off;
        }
        location = /stats {
            sse_stats;
        }
CONF
END { local $?; $t->stop if $t }

my $n = 100;
my $headers = 0;
for my $i (1 .. $n) {
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $t->port) or die "connect: $!";
    print $s "GET /events?topics=half$i HTTP/1.1\r\nHost: localhost\r\n\r\n";
    shutdown($s, 1);
    sleep 0.005;
    my $got = '';
    my $sel = IO::Select->new($s);
    while ($got !~ /\r\n\r\n/ && $sel->can_read(2)) {
        my $r = sysread($s, my $buf, 4096);
        last unless $r;
        $got .= $buf;
    }
    $headers++ if $got =~ m{^HTTP/1\.1 200 }m;
    close $s;
}
cmp_ok($headers, '>=', $n / 2, "most of the $n half-closing clients got the stream's headers ($headers)");
my $st = $t->stats_until({subscribers => 0}, 5);
is($st->{subscribers}, 0, 'every half-closed stream ended: no subscriber left');
is($st->{channels}, 0, 'and no channel');
my @closed = grep { /client prematurely closed connection/ } split /\n/, $t->error_log;
cmp_ok(scalar @closed, '>=', $headers, 'each is logged at info as nginx logs a client that went away');

# A stream whose client keeps its side open stays, as it should.
my $kept = $t->subscribe('/events?topics=kept');
$kept->wait_body(length ":ok\n\n", 5);
sleep 0.5;
is($t->stats->{subscribers}, 1, 'a client that keeps its side open keeps its stream');
$kept->close;

$t->finish;
done_testing;
