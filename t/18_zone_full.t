# A publish the zone cannot hold is refused with 507 and one [error] line; a batch is stored
# whole or not at all; the stream and the zone keep working afterwards.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use SSETest;

my $t = SSETest->new(http => "    sse_shm_size 256k;\n    client_max_body_size 4m;\n", server => <<'CONF')->start;
        location = /events { sse_subscribe $arg_topics; sse_send_buffer 4m; }
        location = /pub { sse_publish $arg_topic; sse_history 0; }
        location = /stats { sse_stats; }
CONF

my $s = $t->subscribe('/events?topics=big');
my $too_big = 'x' x (400 * 1024);

my $r = $t->request('POST', '/pub?topic=big', body => $too_big);
is($r->{status}, 507, 'an event larger than the zone: 507');
is($r->{body}, "the event zone is full: the event was not stored\n", 'with the reason');
is($r->{headers}{'content-type'}, 'text/plain', 'as plain text');

my @errors = grep { /\[error\]/ } split /\n/, $t->error_log;
is(scalar @errors, 1, 'one [error] line');
like($errors[0] // '', qr/sse: shared zone is full, publish of 1 event\(s\), 409600 bytes refused; raise sse_shm_size/,
     'naming the cause and the fix');

# Three events of 90 KB: each fits, all three do not. Nothing of the batch is published.
my $batch = join '', map { "event: part$_\ndata: " . ('y' x (90 * 1024)) . "\n\n" } 1 .. 3;
$r = $t->request('POST', '/pub?topic=big', body => $batch, headers => {'Content-Type' => 'text/event-stream'});
is($r->{status}, 507, 'a batch the zone cannot hold whole: 507');

my $ok = $t->publish('/pub?topic=big', 'small');
my @ev = $s->events(1);
is(scalar @ev, 1, 'the stream received one event');
is($ev[0]{frame}, "id: $ok->{id}\ndata: small\n\n", 'the small event after the refusals, nothing of the refused batch');

my $one = $t->publish('/pub?topic=big', 'z' x (100 * 1024));
@ev = $s->events(2);
is(length($ev[1]{data} // ''), 100 * 1024, 'an event that fits is delivered whole');

my $stats = $t->get_json('/stats');
is($stats->{publishes_refused}, 2, 'stats count the two refusals');
is($stats->{subscribers}, 1, 'the subscriber is still counted');

$s->close;
ok(SSETest::wait_until(sub { $t->get_json('/stats')->{zone_bytes_used} == 0 }, 5), 'the zone empties when the stream leaves');

$t->finish;
done_testing;
