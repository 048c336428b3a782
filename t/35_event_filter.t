# sse_event_filter: a stream keeps only the events whose names match its glob patterns (an
# unnamed event is of type "message"), live and replayed alike, on one or several channels;
# streams without a filter get everything; a bad pattern list is refused with 400 and nothing
# is subscribed.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use SSETest;
use SSEExpect qw(frame frames reset_frame);

my $t = SSETest->new(spread => 1, server => <<'CONF')->start;
        location = /events {
            sse_subscribe $arg_topics;
            sse_event_filter $arg_types;
            sse_heartbeat off;
        }
        location = /pub {
            sse_publish $arg_topic;
        }
        location = /stats {
            sse_stats;
        }
CONF

END { local $?; $t->stop if $t }

my $PRE = ":ok\n\n";
sub pub { my ($ch, $data, $name) = @_; return $t->publish_event("/pub?topic=$ch", $data, $name) }

# Streams on both workers: one filtered, one on two channels filtered, one without a filter.
my $orders = $t->subscribe('/events?topics=f-shop&types=order.*,*.deleted,message', port => $t->port(0));
my $multi = $t->subscribe('/events?topics=f-shop,f-users&types=' . 'user.%3F%3F%3F%3F%3F%3F%3F', port => $t->port(1));
my $all = $t->subscribe('/events?topics=f-shop&types=', port => $t->port(1));
is($_->wait_body(5), $PRE, 'stream opens') for $orders, $multi, $all;

my @e = (pub('f-shop', '{"n":1}', 'order.created'), pub('f-shop', '{"n":2}', 'user.created'),
         pub('f-shop', '{"n":3}', 'user.deleted'), pub('f-shop', 'plain'),
         pub('f-users', '{"n":5}', 'user.created'), pub('f-shop', '{"n":6}', 'order.paid'),
         pub('f-users', '{"n":7}', 'user.renamed'), pub('f-shop', 'done', 'end'));

# order.*, *.deleted, message: 1, 3, 4, 6.
my $want = $PRE . frames(@e[0, 2, 3, 5]);
is($orders->wait_body(length $want, 5), $want, 'order.*,*.deleted,message: exactly the matching events');
# user.??????? (seven characters after "user."): user.created, user.deleted, user.renamed.
$want = $PRE . frames(@e[1, 2, 4, 6]);
is($multi->wait_body(length $want, 5), $want, 'user.??????? over two channels: exactly the matching events');
# No filter (an empty list): every event of f-shop.
$want = $PRE . frames(@e[0 .. 3, 5, 7]);
is($all->wait_body(length $want, 5), $want, 'an empty list filters nothing');

# Replay is filtered the same way: resume from before the first event.
my $r = $t->resume('/events?topics=f-shop&types=order.*', $e[0][0] - 1);
$want = $PRE . frames(@e[0, 5]);
is($r->wait_body(length $want, 5), $want, 'a replay keeps only the matching events');
my $live = pub('f-shop', '{"n":9}', 'order.refunded');
pub('f-shop', '{"n":10}', 'user.created');
my $last = pub('f-shop', '{"n":11}', 'order.closed');
$want .= frames($live, $last);
is($r->wait_body(length $want, 5), $want, 'then live, filtered');
# A reset is sent whatever the filter: it is about the position, not an event type.
my $g = $t->resume('/events?topics=f-shop&types=order.closed', 'garbage');
$want = $PRE . reset_frame('garbage', 'malformed') . frames($last);
is($g->wait_body(length $want, 5), $want, 'the reset event passes any filter');

# Bad lists: 400 with the reason, nothing subscribed.
my $before = $t->stats->{subscribers};
my $bad = $t->request('GET', '/events?topics=f-shop&types=' . ('x' x 129));
is($bad->{status}, 400, 'a 129-byte pattern: 400');
like($bad->{body}, qr/^invalid event type pattern "x{128}"\.\.\.: at most 128 bytes, no line breaks\n\z/, 'with the reason');
$bad = $t->request('GET', '/events?topics=f-shop&types=' . join(',', map {"t$_"} 1 .. 33));
is_deeply([$bad->{status}, $bad->{body}], [400, "too many event type patterns: at most 32\n"], '33 patterns: 400');
$bad = $t->request('GET', '/events?topics=f-shop&types=a%0Ab');
is($bad->{status}, 400, 'a pattern with a line break: 400');
is($t->stats->{subscribers}, $before, 'nothing was subscribed');

$_->close for $orders, $multi, $all, $r, $g;
$t->finish;
done_testing;
