// The pusher-js side of Chorus's `since` extension, exactly as the README shows it: remember
// each history channel's epoch and offset, and resubscribe from there after a reconnect.
//
// pusher-js keeps only event, channel, data and user_id of a frame, so the offsets are read from
// the raw frames of the current transport; and it builds `pusher:subscribe` itself, so `since`
// is added to it on the way out through `pusher.send_event`.

/** Makes `pusher` recover history channels exactly; returns the positions it keeps. */
export function withRecovery(pusher) {
  const positions = {}; // channel -> { epoch, offset }
  const remember = (text) => {
    const frame = JSON.parse(text);
    if (typeof frame.offset === 'number') {
      positions[frame.channel] = { epoch: frame.epoch, offset: frame.offset };
    } else if (frame.event === 'pusher_internal:subscription_succeeded') {
      const data = JSON.parse(frame.data);
      // A fresh or unrecovered subscription starts at the channel's head; a recovered one goes
      // on from where it was, as the replayed events arrive.
      if (typeof data.offset === 'number' && !(data.recovered && positions[frame.channel])) {
        positions[frame.channel] = { epoch: data.epoch ?? '', offset: data.offset };
      }
    }
  };
  pusher.connection.bind('connected', () => {
    pusher.connection.connection.transport.bind('message', (event) => remember(event.data));
  });
  const sendEvent = pusher.send_event.bind(pusher);
  pusher.send_event = (name, data, channel) => {
    const since = name === 'pusher:subscribe' && positions[data.channel];
    return sendEvent(name, since ? { ...data, since } : data, channel);
  };
  return positions;
}
