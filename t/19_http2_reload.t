# HTTP/2 streams (h2c, curl as the client) through a reload: they receive their events, then end
# cleanly when the retiring worker ends its streams (curl exits 0), and new streams work. A
# stream that comes back over HTTP/2 with Last-Event-ID gets exactly what it missed.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(sleep);
use SSETest;

my $t = SSETest->new(extra_ports => 1, server => <<'CONF')->start;
        listen 127.0.0.1:%%PORT1%% http2;
        location = /events { sse_subscribe $arg_topics; }
        location = /pub { sse_publish $arg_topic; }
        location = /stats { sse_stats; }
CONF

# The harness's first listen is HTTP/1.1; this test adds an h2c one on the extra port.
sub curl_stream {
    my ($port, $file, @headers) = @_;
    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        exec('curl', '-sN', '--http2-prior-knowledge', '--max-time', '15', '-o', $file,
             (map { ('-H', $_) } @headers), "http://127.0.0.1:$port/events?topics=h2") or exit 127;
    }
    return $pid;
}

sub slurp { open my $fh, '<', $_[0] or return ''; local $/; return <$fh> }

my @files = map { $t->dir . "/h2-$_.out" } 1 .. 4;
my @pids = map { curl_stream($t->port(1), $_) } @files;
ok(SSETest::wait_until(sub { $t->get_json('/stats')->{subscribers} == 4 }, 5), 'four HTTP/2 streams open');

my $e = $t->publish('/pub?topic=h2', 'over h2');
ok(SSETest::wait_until(sub { !grep { slurp($_) !~ /over h2/ } @files }, 5), 'all received the event');

$t->reload;
for my $i (0 .. $#pids) {
    my $done = SSETest::wait_until(sub { waitpid($pids[$i], 1) > 0 }, 10);
    ok($done, "stream $i ended at the reload");
    is($? >> 8, 0, "curl $i exited 0: the HTTP/2 stream ended cleanly");
    is(slurp($files[$i]), ":ok\n\nid: $e->{id}\ndata: over h2\n\n", "stream $i: exact bytes");
}

my $file = $t->dir . '/h2-new.out';
my $pid = curl_stream($t->port(1), $file);
ok(SSETest::wait_until(sub { $t->get_json('/stats')->{subscribers} == 1 }, 5), 'a new HTTP/2 stream after the reload');
my $e2 = $t->publish('/pub?topic=h2', 'after reload');
ok(SSETest::wait_until(sub { slurp($file) =~ /after reload/ }, 5), 'receives new events');
is(slurp($file), ":ok\n\nid: $e2->{id}\ndata: after reload\n\n", 'exact bytes');
kill 'TERM', $pid;
waitpid($pid, 0);

# Back over HTTP/2 from the id the old streams last saw (before the reload): the one event missed
# since, then live.
$file = $t->dir . '/h2-resume.out';
$pid = curl_stream($t->port(1), $file, "Last-Event-ID: $e->{id}");
ok(SSETest::wait_until(sub { slurp($file) =~ /after reload/ }, 5), 'an HTTP/2 stream resuming with Last-Event-ID');
my $e3 = $t->publish('/pub?topic=h2', 'live again');
ok(SSETest::wait_until(sub { slurp($file) =~ /live again/ }, 5), 'goes live after its replay');
is(slurp($file), ":ok\n\nid: $e2->{id}\ndata: after reload\n\nid: $e3->{id}\ndata: live again\n\n",
   'exactly the missed event, then live');
kill 'TERM', $pid;
waitpid($pid, 0);

$t->finish;
done_testing;
