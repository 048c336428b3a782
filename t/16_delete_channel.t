# DELETE on a publish location closes the channel: its streams end cleanly (terminating chunk,
# then the connection closes), streams of other channels go on, and the channel's state is gone.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use SSETest;

my $t = SSETest->new(server => <<'CONF')->start;
        location = /events { sse_subscribe $arg_topics; }
        location = /pub { sse_publish $arg_topic; }
        location = /stats { sse_stats; }
CONF

my @victims = map { $t->subscribe('/events?topics=victim') } 1 .. 4;
my $both = $t->subscribe('/events?topics=victim,other');
my $other = $t->subscribe('/events?topics=other');
my $before = $t->publish('/pub?topic=victim', 'before');

$_->events(1) for @victims, $both;

my $r = $t->request('DELETE', '/pub?topic=victim');
is($r->{status}, 200, 'DELETE answers 200');
is($r->{body}, qq({"channel":"victim","closed_subscribers":5}\n), 'DELETE reports the streams it closed');

for my $s (@victims, $both) {
    ok($s->wait_eof(5), 'stream of the deleted channel is closed by the server');
    ok($s->ended_cleanly, 'and ended with the terminating chunk');
    is($s->body, ":ok\n\nid: $before->{id}\ndata: before\n\n", 'and got exactly the event before the close');
}

is($t->request('GET', '/pub?topic=victim')->{status}, 404, 'the deleted channel is unknown');
is($t->request('DELETE', '/pub?topic=victim')->{status}, 404, 'deleting it again: 404');

my $later = $t->publish('/pub?topic=other', 'still here');
is($later->{subscribers}, 1, 'the other channel keeps its own subscriber');
my @ev = $other->events(1);
is($ev[0]{frame}, "id: $later->{id}\ndata: still here\n\n", 'and it keeps streaming');

my $fresh = $t->subscribe('/events?topics=victim');
my $again = $t->publish('/pub?topic=victim', 'new life');
is($again->{subscribers}, 1, 'a new stream starts the channel afresh');
@ev = $fresh->events(1);
is($ev[0]{data}, 'new life', 'and receives its events');

ok(SSETest::wait_until(sub { $t->get_json('/stats')->{subscribers} == 2 }, 5), 'stats count only the open streams')
    or diag explain $t->get_json('/stats');

$t->finish;
done_testing;
